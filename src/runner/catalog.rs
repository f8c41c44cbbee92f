//! The releases a runner has loaded and how tasks route to them: each release is loaded
//! into one interpreter per slot (so slots run its tasks in parallel), and a task goes to the
//! release that registered its exact identifier (the server hands tasks out carrying the
//! runner's own identifier).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

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
/// deployments change.
#[derive(Default, Clone)]
pub struct Catalog {
    /// By workflow slug (or the project label in direct mode).
    pub releases: HashMap<String, Arc<LoadedSet>>,
}

impl Catalog {
    /// The identifiers to advertise: the union over releases, minus identifiers two
    /// releases register (ambiguous: neither gets those tasks).
    pub fn identifiers(&self) -> Vec<(String, String)> {
        let mut owners: HashMap<&(String, String), usize> = HashMap::new();
        for set in self.releases.values() {
            for identifier in &set.identifiers {
                *owners.entry(identifier).or_default() += 1;
            }
        }
        let mut identifiers: Vec<(String, String)> = owners
            .into_iter()
            .filter(|(_, count)| *count == 1)
            .map(|(identifier, _)| identifier.clone())
            .collect();
        identifiers.sort();
        identifiers
    }

    /// The release that runs `identifier`, if exactly one registered it.
    pub fn route(&self, name: &str, version: &str) -> Option<Arc<LoadedSet>> {
        let mut found = self.releases.values().filter(|set| {
            set.identifiers
                .iter()
                .any(|(n, v)| n == name && v == version)
        });
        let first = found.next()?;
        if found.next().is_some() {
            return None;
        }
        Some(first.clone())
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
}
