//! The releases a runner has loaded and how tasks route to them: each release is loaded
//! into one interpreter per slot (so slots run its tasks in parallel), and a task goes to the
//! release that registered its exact identifier (the server hands tasks out carrying the
//! runner's own identifier).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Semaphore;

use crate::api::limits::MAX_IDENTIFIERS_PER_CLAIM;
use crate::api::submission::parse_identifier;
use crate::api::workflows_v1::TaskIdentifier;
use crate::python::{self, Batch, Isolation, LoadedRelease, Placement, Release, TaskOutcome};

/// A release loaded into `slots` interpreters.
pub struct LoadedSet {
    pub label: String,
    /// What identifies the release's content (artifact digest, or the project path).
    pub key: String,
    pub isolation: Isolation,
    pub fallback_reason: Option<String>,
    pub identifiers: Vec<(String, String)>,
    instances: Vec<LoadedRelease>,
    free: Mutex<Vec<usize>>,
    available: Semaphore,
}

impl LoadedSet {
    /// Loads `release` `count` times: the first load probes where it belongs, the others
    /// follow that verdict.
    pub async fn load(release: Release, key: String, count: usize) -> Result<Self, python::Error> {
        let first = python::load(release.clone(), Placement::Auto).await?;
        let isolation = first.isolation();
        let fallback_reason = first.fallback_reason.clone();
        let identifiers = valid_identifiers(&release.label, first.identifiers(), first.classes());
        let placement = match isolation {
            Isolation::SubInterpreter => Placement::SubInterpreter,
            Isolation::ChildProcess => Placement::ChildProcess,
        };
        let mut instances = vec![first];
        for _ in 1..count.max(1) {
            instances.push(python::load(release.clone(), placement).await?);
        }
        let count = instances.len();
        Ok(Self {
            label: release.label,
            key,
            isolation,
            fallback_reason,
            identifiers,
            instances,
            free: Mutex::new((0..count).collect()),
            available: Semaphore::new(count),
        })
    }

    /// Executes several tasks in one handoff to a free interpreter of this release, in
    /// order; one outcome per task (see `LoadedRelease::execute_batch`).
    pub async fn execute_batch(&self, batch: Batch) -> Vec<Result<TaskOutcome, python::Error>> {
        let count = batch.len();
        let Ok(_permit) = self.available.acquire().await else {
            return (0..count)
                .map(|_| Err(python::Error::InterpreterGone))
                .collect();
        };
        let Some(index) = self.free.lock().ok().and_then(|mut free| free.pop()) else {
            return (0..count)
                .map(|_| Err(python::Error::InterpreterGone))
                .collect();
        };
        let outcomes = self.instances[index].execute_batch(batch).await;
        if let Ok(mut free) = self.free.lock() {
            free.push(index);
        }
        outcomes
    }

    /// Unloads every interpreter (after the tasks running in them finished).
    pub async fn unload(self) {
        for instance in self.instances {
            instance.unload().await;
        }
    }
}

/// The identifiers of `registered` the server accepts (`api::submission::parse_identifier`).
/// Each other one is skipped with a log line naming the release, the identifier and why: one
/// bad task class must not get the runner's claims refused, for this release or any other.
/// A release built with `build-release` has none (the build refuses them); this guards
/// artifacts made or uploaded some other way.
fn valid_identifiers(
    release: &str,
    registered: &[(String, String)],
    classes: &[String],
) -> Vec<(String, String)> {
    registered
        .iter()
        .enumerate()
        .filter(|(index, (name, version))| {
            let identifier = TaskIdentifier {
                name: name.clone(),
                version: version.clone(),
            };
            match parse_identifier(&identifier) {
                Ok(_) => true,
                Err(error) => {
                    tracing::error!(
                        release = %release,
                        class = %classes.get(*index).map_or("?", String::as_str),
                        name = ?name,
                        version = ?version,
                        reason = ?error.to_string(),
                        "skipping a task class with an invalid identifier; the release's other task classes keep running"
                    );
                    false
                }
            }
        })
        .map(|(_, identifier)| identifier.clone())
        .collect()
}

/// The loaded releases and the identifiers the runner advertises; replaced as a whole when
/// deployments change (its releases are filled in before it is first asked what it
/// advertises, which is then worked out once).
#[derive(Default, Clone)]
pub struct Catalog {
    /// By workflow slug (or the project label in direct mode).
    pub releases: HashMap<String, Arc<LoadedSet>>,
    advertised: OnceLock<Advertised>,
}

/// What a catalog advertises, and the releases it leaves out to stay within the limit.
#[derive(Debug, Clone, Default)]
struct Advertised {
    identifiers: Vec<(String, String)>,
    skipped: HashSet<String>,
}

impl Catalog {
    /// The identifiers to advertise: the union over releases, minus identifiers two
    /// releases register (ambiguous: neither gets those tasks), at most
    /// [`MAX_IDENTIFIERS_PER_CLAIM`] of them (see [`advertise`]).
    pub fn identifiers(&self) -> Vec<(String, String)> {
        self.advertised().identifiers.clone()
    }

    fn advertised(&self) -> &Advertised {
        self.advertised.get_or_init(|| {
            let mut releases: Vec<(&str, &[(String, String)])> = self
                .releases
                .iter()
                .map(|(workflow, set)| (workflow.as_str(), set.identifiers.as_slice()))
                .collect();
            releases.sort_by_key(|(workflow, _)| *workflow);
            advertise(&releases, MAX_IDENTIFIERS_PER_CLAIM)
        })
    }

    /// The release that runs `identifier`, if exactly one registered it (and it is not left
    /// out for the limit).
    pub fn route(&self, name: &str, version: &str) -> Option<Arc<LoadedSet>> {
        let skipped = &self.advertised().skipped;
        let mut found = self.releases.iter().filter(|(workflow, set)| {
            !skipped.contains(*workflow)
                && set
                    .identifiers
                    .iter()
                    .any(|(n, v)| n == name && v == version)
        });
        let (_, first) = found.next()?;
        if found.next().is_some() {
            return None;
        }
        Some(first.clone())
    }
}

/// The identifiers `releases` (by workflow, in the order given) advertise together, without
/// those two releases register, and the releases left out so that no more than `limit` are
/// advertised: the server refuses a whole claim over the limit, which would stop every
/// release's tasks, so releases are kept in order while they fit, and each release that would
/// cross the limit is skipped with a log line naming it, its count and the limit (a later,
/// smaller one may still fit).
fn advertise(releases: &[(&str, &[(String, String)])], limit: usize) -> Advertised {
    let mut owners: HashMap<&(String, String), usize> = HashMap::new();
    let mut advertised = 0usize;
    let mut skipped = HashSet::new();
    for (workflow, identifiers) in releases {
        let distinct: HashSet<&(String, String)> = identifiers.iter().collect();
        let mut next = advertised;
        for identifier in &distinct {
            match owners.get(identifier).copied().unwrap_or(0) {
                0 => next += 1,
                1 => next -= 1,
                _ => {}
            }
        }
        if next > limit {
            tracing::error!(
                workflow = %workflow,
                identifiers = distinct.len(),
                advertised,
                limit,
                "skipping a release: advertising its task identifiers would exceed the {limit} one claim may carry; the other releases keep running"
            );
            skipped.insert(workflow.to_string());
            continue;
        }
        for identifier in distinct {
            *owners.entry(identifier).or_default() += 1;
        }
        advertised = next;
    }
    let mut identifiers: Vec<(String, String)> = owners
        .into_iter()
        .filter(|(_, count)| *count == 1)
        .map(|(identifier, _)| identifier.clone())
        .collect();
    identifiers.sort();
    Advertised {
        identifiers,
        skipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_identifiers_are_skipped_and_valid_ones_kept_in_order() {
        let pair = |name: &str, version: &str| (name.to_string(), version.to_string());
        let registered = [
            pair("B", "v1.0"),
            pair("X", "v1.0\n"),
            pair("A", "v0.0"),
            pair("Y", "v1.9223372036854775808"),
            pair("", "v1.0"),
        ];
        assert_eq!(
            valid_identifiers("release", &registered, &[]),
            vec![pair("B", "v1.0"), pair("A", "v0.0")]
        );
    }

    fn identifiers(prefix: &str, count: usize) -> Vec<(String, String)> {
        (0..count)
            .map(|index| (format!("{prefix}{index}"), "v1.0".to_string()))
            .collect()
    }

    fn set(label: &str, identifiers: Vec<(String, String)>) -> Arc<LoadedSet> {
        Arc::new(LoadedSet {
            label: label.to_string(),
            key: label.to_string(),
            isolation: Isolation::SubInterpreter,
            fallback_reason: None,
            identifiers,
            instances: Vec::new(),
            free: Mutex::new(Vec::new()),
            available: Semaphore::new(0),
        })
    }

    #[test]
    fn releases_that_would_cross_the_identifier_limit_are_skipped_and_the_others_advertised() {
        let mut catalog = Catalog::default();
        // In workflow order: a fits, b would cross the limit, c still fits after it.
        catalog
            .releases
            .insert("a".into(), set("a", identifiers("A", 600)));
        catalog
            .releases
            .insert("b".into(), set("b", identifiers("B", 401)));
        catalog
            .releases
            .insert("c".into(), set("c", identifiers("C", 400)));
        catalog
            .releases
            .insert("d".into(), set("d", identifiers("D", 1)));
        let advertised = catalog.identifiers();
        assert_eq!(advertised.len(), MAX_IDENTIFIERS_PER_CLAIM);
        assert!(advertised.iter().all(|(name, _)| !name.starts_with('B')));
        assert!(advertised.contains(&("A0".to_string(), "v1.0".to_string())));
        assert!(advertised.contains(&("C399".to_string(), "v1.0".to_string())));
        // d would be the 1,001st.
        assert!(!advertised.contains(&("D0".to_string(), "v1.0".to_string())));
        // Tasks of a skipped release are not routed to it.
        assert!(catalog.route("B0", "v1.0").is_none());
        assert_eq!(
            catalog.route("A0", "v1.0").map(|set| set.label.clone()),
            Some("a".into())
        );

        // One release over the limit alone is skipped; the others keep running.
        let mut catalog = Catalog::default();
        catalog
            .releases
            .insert("big".into(), set("big", identifiers("X", 1_001)));
        catalog
            .releases
            .insert("small".into(), set("small", identifiers("S", 3)));
        assert_eq!(catalog.identifiers(), identifiers("S", 3));
        assert!(catalog.route("X0", "v1.0").is_none());
        assert!(catalog.route("S2", "v1.0").is_some());
    }

    #[test]
    fn identifiers_two_releases_share_count_once_against_the_limit() {
        let shared = identifiers("Shared", 2);
        let mut first = identifiers("A", 499);
        first.extend(shared.clone());
        let mut second = identifiers("B", 499);
        second.extend(shared.clone());
        // Registered twice, the shared ones are advertised by neither: 998 advertised.
        let releases: [(&str, &[(String, String)]); 2] = [("a", &first), ("b", &second)];
        let advertised = advertise(&releases, 1_000);
        assert!(advertised.skipped.is_empty());
        assert_eq!(advertised.identifiers.len(), 998);
        assert!(!advertised.identifiers.contains(&shared[0]));
        // With a limit of 997 the second release would cross it.
        let advertised = advertise(&releases, 997);
        assert_eq!(advertised.skipped, HashSet::from(["b".to_string()]));
        assert_eq!(advertised.identifiers.len(), 501);
    }
}
