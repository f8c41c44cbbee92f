//! The pure rules both backends apply the same way: who may report or extend a task
//! ([`is_claimant`]), how a failure reason joins a task's display ([`with_reason`]), and
//! which identifiers of a runner a claim looks for ([`best_identifiers`]), and how a runner's
//! advertised identifiers are stored ([`identifiers_json`]).

use std::collections::HashMap;

use crate::api::limits::MAX_DISPLAY_CHARS;
use crate::server::store::{Error, Identifier, Result};

/// What a caller asks of a running task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    Report,
    Extend,
}

/// The fields of a task [`is_claimant`] decides on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt<'a> {
    /// Whether the task is running.
    pub running: bool,
    pub claimant: Option<&'a str>,
    /// Handed out again after a lost lease or a hand-back.
    pub fenced: bool,
}

/// Whether `caller` is the claimant of the task's current attempt, for `act`.
///
/// A runner id (`runner:<id>`) must match exactly. A caller without one, the official SDK,
/// is `host:<key>@<ip>:<port>` (see `services::caller`): its lease renewer is a separate
/// process on its own connection, and its main connection may reconnect, so the same key on
/// the same host is the claimant; only after the task was fenced (a lost lease or a
/// hand-back) must a report come from the very connection that claimed the attempt, so a
/// late report of an older attempt by another SDK runner on that host is stale. Extensions
/// stay per host: the renewer never shares the claiming connection.
pub(crate) fn is_claimant(attempt: Attempt<'_>, caller: &str, act: Act) -> bool {
    let Some(claimant) = attempt.claimant else {
        return false;
    };
    if !attempt.running {
        return false;
    }
    if claimant == caller {
        return true;
    }
    match (host_of(claimant), host_of(caller)) {
        (Some(claimed_by), Some(calling)) => {
            claimed_by == calling && (act == Act::Extend || !attempt.fenced)
        }
        _ => false,
    }
}

/// The host of a claimant without a runner id, with the key it called with:
/// `host:<key>@<ip>:<port>` answers `<key>@<ip>` (and `host:<ip>:<port>`, `<ip>`).
pub(crate) fn host_of(claimant: &str) -> Option<&str> {
    let (host, _port) = claimant.strip_prefix("host:")?.rsplit_once(':')?;
    Some(host)
}

/// `display` with the line `reason` appended, at most [`MAX_DISPLAY_CHARS`] characters: the
/// reason is kept whole and the head of `display` is cut to make room (a stored display is
/// handed to the next attempt, which reports it back; over the limit, that report would fail
/// the task). A reason longer than the limit by itself (the store's own are short) is cut.
pub(crate) fn with_reason(display: &str, reason: &str) -> String {
    let reason_chars = reason.chars().count();
    if reason_chars >= MAX_DISPLAY_CHARS {
        return reason.chars().take(MAX_DISPLAY_CHARS).collect();
    }
    let room = MAX_DISPLAY_CHARS - reason_chars - 1;
    let display_chars = display.chars().count();
    let kept = match display
        .char_indices()
        .nth(display_chars.saturating_sub(room))
    {
        Some((start, _)) => &display[start..],
        None => "",
    };
    format!("{kept}\n{reason}")
}

/// The identifiers a claim looks for: for each (name, major) a runner advertises, its
/// highest minor, which runs every task of that name and major up to it.
pub(crate) fn best_identifiers(identifiers: &[Identifier]) -> Vec<&Identifier> {
    let mut best: HashMap<(&str, u64), &Identifier> = HashMap::new();
    for identifier in identifiers {
        let key = (identifier.name.as_str(), identifier.major);
        match best.get(&key) {
            Some(current) if current.minor >= identifier.minor => {}
            _ => {
                best.insert(key, identifier);
            }
        }
    }
    best.into_values().collect()
}

/// A runner's identifiers as stored: `[[name, version], …]`.
pub(crate) fn identifiers_json(identifiers: &[(String, String)]) -> String {
    serde_json::to_string(identifiers).expect("pairs of strings serialise")
}

pub(crate) fn identifiers_from_json(runner: &str, text: &str) -> Result<Vec<(String, String)>> {
    serde_json::from_str(text).map_err(|error| {
        Error::Corrupt(format!(
            "the stored identifiers of runner `{runner}` are not a list of pairs: {error}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identifier(name: &str, major: u64, minor: u64) -> Identifier {
        Identifier {
            name: name.to_string(),
            version: format!("v{major}.{minor}"),
            major,
            minor,
        }
    }

    #[test]
    fn the_highest_minor_per_name_and_major_is_kept() {
        let identifiers = [
            identifier("A", 1, 0),
            identifier("A", 1, 3),
            identifier("A", 1, 2),
            identifier("A", 2, 0),
            identifier("B", 1, 1),
        ];
        let mut best: Vec<String> = best_identifiers(&identifiers)
            .into_iter()
            .map(|identifier| format!("{}@{}", identifier.name, identifier.version))
            .collect();
        best.sort();
        assert_eq!(best, ["A@v1.3", "A@v2.0", "B@v1.1"]);
    }

    #[test]
    fn an_sdk_host_is_the_claimant_until_the_task_is_fenced() {
        let attempt = |fenced| Attempt {
            running: true,
            claimant: Some("host:key@10.0.0.1:5000"),
            fenced,
        };
        let other_port = "host:key@10.0.0.1:6000";
        assert!(is_claimant(attempt(false), other_port, Act::Report));
        assert!(!is_claimant(attempt(true), other_port, Act::Report));
        assert!(is_claimant(attempt(true), other_port, Act::Extend));
        assert!(!is_claimant(
            attempt(false),
            "host:other@10.0.0.1:5000",
            Act::Report
        ));
        let runner = Attempt {
            running: true,
            claimant: Some("runner:a"),
            fenced: false,
        };
        assert!(is_claimant(runner, "runner:a", Act::Report));
        assert!(!is_claimant(runner, "runner:b", Act::Extend));
        let ended = Attempt {
            running: false,
            ..runner
        };
        assert!(!is_claimant(ended, "runner:a", Act::Report));
    }
}
