//! Validation of task submissions (`TaskSubmissions` and the legacy single-task list) into
//! the flat list of tasks the store inserts. Pure: no I/O. The server applies it to jobs and
//! to the subtasks a task submits; `task run` applies the same rules locally.

use std::collections::HashSet;

use uuid::Uuid;

use super::workflows_v1::{SingleTaskSubmission, TaskIdentifier, TaskSubmissions};

/// A task identifier with its parsed version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identifier {
    pub name: String,
    /// The version as submitted, e.g. `v1.3`.
    pub version: String,
    pub major: u64,
    pub minor: u64,
}

/// A task to insert, as a validated submission describes it.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub id: Uuid,
    pub identifier: Identifier,
    pub input: Vec<u8>,
    pub display: String,
    /// Resolved cluster slug (never empty).
    pub cluster: String,
    pub max_retries: i64,
    pub optional: bool,
    /// Indexes of earlier-or-later tasks of the same submission this task waits for.
    pub depends_on: Vec<usize>,
}

/// At most this many groups per submission (the public API's limit).
pub const MAX_GROUPS: usize = 64;
/// At most this many legacy single-task submissions per request.
pub const MAX_LEGACY_TASKS: usize = 1000;
/// At most this many dependency edges one submission may expand to.
pub const MAX_DEPENDENCY_EDGES: usize = 1_000_000;
/// Longest task identifier name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// Why a submission was refused; every message names the offending group, task or value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("a submission needs at least one task group")]
    NoGroups,
    #[error("a submission may have at most {MAX_GROUPS} task groups, got {0}")]
    TooManyGroups(usize),
    #[error("task group {group} has no tasks")]
    EmptyGroup { group: usize },
    #[error(
        "task group {group}: `{field}` has {actual} values but the group has {expected} inputs"
    )]
    LengthMismatch {
        group: usize,
        field: &'static str,
        expected: usize,
        actual: usize,
    },
    #[error(
        "task group {group}, task {task}: `{field}` points at entry {pointer} but the lookup has {length}"
    )]
    PointerOutOfRange {
        group: usize,
        task: usize,
        field: &'static str,
        pointer: u64,
        length: usize,
    },
    #[error("task group {group}, task {task}: input is {size} bytes; the limit is {limit}")]
    InputTooLarge {
        group: usize,
        task: usize,
        size: usize,
        limit: usize,
    },
    #[error("task group {group}, task {task}: max_retries must not be negative, got {value}")]
    NegativeRetries {
        group: usize,
        task: usize,
        value: i64,
    },
    #[error("task group {group} depends on group {dependency}, which does not exist")]
    UnknownGroup { group: usize, dependency: u32 },
    #[error("task group {group} depends on itself")]
    SelfDependency { group: usize },
    #[error("the dependencies between task groups form a cycle through group {group}")]
    Cycle { group: usize },
    #[error("display name {index} is empty")]
    EmptyDisplay { index: usize },
    #[error(transparent)]
    Identifier(#[from] IdentifierError),
    #[error("the submission expands to more than {MAX_DEPENDENCY_EDGES} dependency edges")]
    TooManyEdges,
    #[error("at most {MAX_LEGACY_TASKS} legacy tasks may be submitted at once, got {0}")]
    TooManyLegacyTasks(usize),
    #[error("legacy task {task} depends on task {dependency}, which does not exist or is itself")]
    UnknownLegacyDependency { task: usize, dependency: i64 },
    #[error("the dependencies between legacy tasks form a cycle through task {task}")]
    LegacyCycle { task: usize },
    #[error("subtask cluster `{cluster}` does not exist")]
    UnknownCluster { cluster: String },
}

/// The display of a task whose submitted subtasks were refused: the SDK's failure display
/// with an `InvalidSubtasks("<reason>")` exception.
pub fn invalid_subtasks_display(display: &str, reason: &Error) -> String {
    crate::api::convert::failure_display(
        display,
        &format!("InvalidSubtasks({:?})", reason.to_string()),
    )
}

/// A task identifier that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    #[error("task identifier name must be 1 to {MAX_NAME_BYTES} bytes, got {0} bytes")]
    NameLength(usize),
    #[error(
        "task identifier `{name}` has version `{version}`; expected the form vMAJOR.MINOR, e.g. v1.0"
    )]
    Version { name: String, version: String },
}

/// Parses and validates a task identifier.
pub fn parse_identifier(identifier: &TaskIdentifier) -> Result<Identifier, IdentifierError> {
    let name = &identifier.name;
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(IdentifierError::NameLength(name.len()));
    }
    let invalid = || IdentifierError::Version {
        name: name.clone(),
        version: identifier.version.clone(),
    };
    let (major, minor) = identifier
        .version
        .strip_prefix('v')
        .and_then(|rest| rest.split_once('.'))
        .ok_or_else(invalid)?;
    let number = |text: &str| -> Option<u64> {
        if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    };
    Ok(Identifier {
        name: name.clone(),
        version: identifier.version.clone(),
        major: number(major).ok_or_else(invalid)?,
        minor: number(minor).ok_or_else(invalid)?,
    })
}

/// The largest task input accepted by default, in bytes.
pub const DEFAULT_MAX_INPUT_BYTES: usize = 2048;

/// Limits a submission is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_input_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_input_bytes: DEFAULT_MAX_INPUT_BYTES,
        }
    }
}

/// Expands grouped submissions into tasks; `""` clusters become `fallback_cluster`.
pub fn expand(
    submissions: &TaskSubmissions,
    fallback_cluster: &str,
    limits: Limits,
) -> Result<Vec<NewTask>, Error> {
    let groups = &submissions.task_groups;
    if groups.is_empty() {
        return Err(Error::NoGroups);
    }
    if groups.len() > MAX_GROUPS {
        return Err(Error::TooManyGroups(groups.len()));
    }
    let identifiers = submissions
        .identifier_lookup
        .iter()
        .map(parse_identifier)
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(index) = submissions.display_lookup.iter().position(String::is_empty) {
        return Err(Error::EmptyDisplay { index });
    }
    // Validate the group graph first: references, self edges, cycles.
    for (group_index, group) in groups.iter().enumerate() {
        for &dependency in &group.dependencies_on_other_groups {
            if dependency as usize >= groups.len() {
                return Err(Error::UnknownGroup {
                    group: group_index,
                    dependency,
                });
            }
            if dependency as usize == group_index {
                return Err(Error::SelfDependency { group: group_index });
            }
        }
    }
    let dependencies: Vec<Vec<usize>> = groups
        .iter()
        .map(|group| {
            group
                .dependencies_on_other_groups
                .iter()
                .map(|&d| d as usize)
                .collect()
        })
        .collect();
    if let Some(group) = find_cycle(&dependencies) {
        return Err(Error::Cycle { group });
    }

    let mut ranges = Vec::with_capacity(groups.len());
    let mut tasks = Vec::new();
    for (group_index, group) in groups.iter().enumerate() {
        let count = group.inputs.len();
        if count == 0 {
            return Err(Error::EmptyGroup { group: group_index });
        }
        let check = |field: &'static str, actual: usize, allow_empty: bool| {
            if actual == count || (allow_empty && actual == 0) {
                Ok(())
            } else {
                Err(Error::LengthMismatch {
                    group: group_index,
                    field,
                    expected: count,
                    actual,
                })
            }
        };
        check(
            "identifier_pointers",
            group.identifier_pointers.len(),
            false,
        )?;
        check(
            "cluster_slug_pointers",
            group.cluster_slug_pointers.len(),
            false,
        )?;
        check("display_pointers", group.display_pointers.len(), false)?;
        check("max_retries_values", group.max_retries_values.len(), true)?;
        check("optional_values", group.optional_values.len(), true)?;
        let start = tasks.len();
        for task_index in 0..count {
            let lookup = |field: &'static str, pointer: u64, length: usize| {
                if (pointer as usize) < length && pointer <= usize::MAX as u64 {
                    Ok(pointer as usize)
                } else {
                    Err(Error::PointerOutOfRange {
                        group: group_index,
                        task: task_index,
                        field,
                        pointer,
                        length,
                    })
                }
            };
            let identifier = &identifiers[lookup(
                "identifier_pointers",
                group.identifier_pointers[task_index],
                identifiers.len(),
            )?];
            let cluster = &submissions.cluster_slug_lookup[lookup(
                "cluster_slug_pointers",
                group.cluster_slug_pointers[task_index],
                submissions.cluster_slug_lookup.len(),
            )?];
            let display = &submissions.display_lookup[lookup(
                "display_pointers",
                group.display_pointers[task_index],
                submissions.display_lookup.len(),
            )?];
            let input = &group.inputs[task_index];
            if input.len() > limits.max_input_bytes {
                return Err(Error::InputTooLarge {
                    group: group_index,
                    task: task_index,
                    size: input.len(),
                    limit: limits.max_input_bytes,
                });
            }
            let max_retries = group
                .max_retries_values
                .get(task_index)
                .copied()
                .unwrap_or(0);
            if max_retries < 0 {
                return Err(Error::NegativeRetries {
                    group: group_index,
                    task: task_index,
                    value: max_retries,
                });
            }
            tasks.push(NewTask {
                id: Uuid::now_v7(),
                identifier: identifier.clone(),
                input: input.clone(),
                display: display.clone(),
                cluster: if cluster.is_empty() {
                    fallback_cluster.to_string()
                } else {
                    cluster.clone()
                },
                max_retries,
                optional: group
                    .optional_values
                    .get(task_index)
                    .copied()
                    .unwrap_or(false),
                depends_on: Vec::new(),
            });
        }
        ranges.push(start..tasks.len());
    }
    let mut edges = 0usize;
    for (group_index, group_dependencies) in dependencies.iter().enumerate() {
        let unique: HashSet<usize> = group_dependencies.iter().copied().collect();
        let mut depends_on: Vec<usize> = unique
            .into_iter()
            .flat_map(|dependency| ranges[dependency].clone())
            .collect();
        depends_on.sort_unstable();
        edges = edges.saturating_add(depends_on.len().saturating_mul(ranges[group_index].len()));
        if edges > MAX_DEPENDENCY_EDGES {
            return Err(Error::TooManyEdges);
        }
        for task in ranges[group_index].clone() {
            tasks[task].depends_on = depends_on.clone();
        }
    }
    Ok(tasks)
}

/// Expands the deprecated single-task submission list.
pub fn expand_legacy(
    submissions: &[SingleTaskSubmission],
    fallback_cluster: &str,
    limits: Limits,
) -> Result<Vec<NewTask>, Error> {
    if submissions.is_empty() {
        return Err(Error::NoGroups);
    }
    if submissions.len() > MAX_LEGACY_TASKS {
        return Err(Error::TooManyLegacyTasks(submissions.len()));
    }
    let mut tasks = Vec::with_capacity(submissions.len());
    let mut graph = Vec::with_capacity(submissions.len());
    for (index, submission) in submissions.iter().enumerate() {
        let identifier = parse_identifier(
            submission
                .identifier
                .as_ref()
                .unwrap_or(&TaskIdentifier::default()),
        )?;
        if submission.input.len() > limits.max_input_bytes {
            return Err(Error::InputTooLarge {
                group: 0,
                task: index,
                size: submission.input.len(),
                limit: limits.max_input_bytes,
            });
        }
        if submission.max_retries < 0 {
            return Err(Error::NegativeRetries {
                group: 0,
                task: index,
                value: submission.max_retries,
            });
        }
        let mut depends_on = Vec::with_capacity(submission.dependencies.len());
        for &dependency in &submission.dependencies {
            if dependency < 0
                || dependency as usize >= submissions.len()
                || dependency as usize == index
            {
                return Err(Error::UnknownLegacyDependency {
                    task: index,
                    dependency,
                });
            }
            depends_on.push(dependency as usize);
        }
        graph.push(depends_on.clone());
        tasks.push(NewTask {
            id: Uuid::now_v7(),
            display: if submission.display.is_empty() {
                identifier.name.clone()
            } else {
                submission.display.clone()
            },
            identifier,
            input: submission.input.clone(),
            cluster: if submission.cluster_slug.is_empty() {
                fallback_cluster.to_string()
            } else {
                submission.cluster_slug.clone()
            },
            max_retries: submission.max_retries,
            optional: false,
            depends_on,
        });
    }
    if let Some(task) = find_cycle(&graph) {
        return Err(Error::LegacyCycle { task });
    }
    Ok(tasks)
}

/// A node on a dependency cycle, if the graph (node -> nodes it depends on) has one.
fn find_cycle(graph: &[Vec<usize>]) -> Option<usize> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut marks = vec![Mark::New; graph.len()];
    for start in 0..graph.len() {
        if marks[start] != Mark::New {
            continue;
        }
        // Iterative depth-first search: (node, next edge to follow).
        let mut stack = vec![(start, 0usize)];
        marks[start] = Mark::Active;
        while let Some((node, edge)) = stack.pop() {
            if let Some(&next) = graph[node].get(edge) {
                stack.push((node, edge + 1));
                match marks[next] {
                    Mark::Active => return Some(next),
                    Mark::New => {
                        marks[next] = Mark::Active;
                        stack.push((next, 0));
                    }
                    Mark::Done => {}
                }
            } else {
                marks[node] = Mark::Done;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::workflows_v1::TaskSubmissionGroup;

    const LIMITS: Limits = Limits {
        max_input_bytes: 2048,
    };

    fn identifier(name: &str, version: &str) -> TaskIdentifier {
        TaskIdentifier {
            name: name.into(),
            version: version.into(),
        }
    }

    fn group(inputs: &[&str], dependencies: &[u32]) -> TaskSubmissionGroup {
        let count = inputs.len();
        TaskSubmissionGroup {
            dependencies_on_other_groups: dependencies.to_vec(),
            inputs: inputs
                .iter()
                .map(|input| input.as_bytes().to_vec())
                .collect(),
            identifier_pointers: vec![0; count],
            cluster_slug_pointers: vec![0; count],
            display_pointers: vec![0; count],
            max_retries_values: vec![0; count],
            optional_values: vec![false; count],
        }
    }

    fn submissions(groups: Vec<TaskSubmissionGroup>) -> TaskSubmissions {
        TaskSubmissions {
            task_groups: groups,
            cluster_slug_lookup: vec![String::new()],
            identifier_lookup: vec![identifier("Leaf", "v0.0")],
            display_lookup: vec!["Leaf".into()],
        }
    }

    #[test]
    fn versions_must_be_v_major_dot_minor() {
        for good in ["v0.0", "v1.3", "v01.002", "v10.20"] {
            assert!(parse_identifier(&identifier("T", good)).is_ok(), "{good}");
        }
        for bad in [
            "1.2", "v1.2.3", "", "v1", "v1.", "v.1", "v1.0\n", "v-1.0", "V1.0", "v1.x",
        ] {
            let error = parse_identifier(&identifier("T", bad)).unwrap_err();
            assert!(error.to_string().contains("vMAJOR.MINOR"), "{bad}: {error}");
        }
        let parsed = parse_identifier(&identifier("T", "v01.002")).unwrap();
        assert_eq!((parsed.major, parsed.minor), (1, 2));
    }

    #[test]
    fn names_must_be_one_to_256_bytes() {
        assert!(parse_identifier(&identifier("", "v0.0")).is_err());
        assert!(parse_identifier(&identifier(&"x".repeat(256), "v0.0")).is_ok());
        assert_eq!(
            parse_identifier(&identifier(&"x".repeat(257), "v0.0")).unwrap_err(),
            IdentifierError::NameLength(257)
        );
    }

    #[test]
    fn group_dependencies_expand_to_every_task_of_the_group() {
        let tasks = expand(
            &submissions(vec![group(&["1", "2"], &[]), group(&["3"], &[0])]),
            "default",
            LIMITS,
        )
        .unwrap();
        assert_eq!(tasks.len(), 3);
        assert_eq!(tasks[2].depends_on, vec![0, 1]);
        assert!(tasks[0].depends_on.is_empty());
        assert_eq!(
            tasks[0].cluster, "default",
            "empty cluster means the fallback"
        );
        assert_eq!(tasks[1].input, b"2");
    }

    #[test]
    fn cycles_between_groups_are_refused() {
        let error = expand(
            &submissions(vec![group(&["1"], &[1]), group(&["2"], &[0])]),
            "c",
            LIMITS,
        )
        .unwrap_err();
        assert!(matches!(error, Error::Cycle { .. }), "{error}");
        let error = expand(&submissions(vec![group(&["1"], &[0])]), "c", LIMITS).unwrap_err();
        assert_eq!(error, Error::SelfDependency { group: 0 });
    }

    #[test]
    fn over_limit_inputs_and_bad_shapes_are_refused_with_their_position() {
        let big = "x".repeat(2049);
        let error = expand(&submissions(vec![group(&["1", &big], &[])]), "c", LIMITS).unwrap_err();
        assert_eq!(
            error,
            Error::InputTooLarge {
                group: 0,
                task: 1,
                size: 2049,
                limit: 2048
            }
        );
        assert!(error.to_string().contains("task group 0, task 1"));

        let mut bad = group(&["1", "2"], &[]);
        bad.display_pointers = vec![0];
        let error = expand(&submissions(vec![bad]), "c", LIMITS).unwrap_err();
        assert!(
            matches!(
                error,
                Error::LengthMismatch {
                    field: "display_pointers",
                    ..
                }
            ),
            "{error}"
        );

        let mut bad = group(&["1"], &[]);
        bad.identifier_pointers = vec![5];
        let error = expand(&submissions(vec![bad]), "c", LIMITS).unwrap_err();
        assert!(
            matches!(error, Error::PointerOutOfRange { pointer: 5, .. }),
            "{error}"
        );

        let error = expand(&submissions(vec![group(&["1"], &[7])]), "c", LIMITS).unwrap_err();
        assert_eq!(
            error,
            Error::UnknownGroup {
                group: 0,
                dependency: 7
            }
        );

        assert_eq!(
            expand(&submissions(vec![]), "c", LIMITS).unwrap_err(),
            Error::NoGroups
        );
        let many = (0..65).map(|_| group(&["1"], &[])).collect();
        assert_eq!(
            expand(&submissions(many), "c", LIMITS).unwrap_err(),
            Error::TooManyGroups(65)
        );
    }

    #[test]
    fn empty_optional_values_mean_none_optional() {
        let mut plain = group(&["1"], &[]);
        plain.optional_values.clear();
        plain.max_retries_values.clear();
        let tasks = expand(&submissions(vec![plain]), "c", LIMITS).unwrap();
        assert!(!tasks[0].optional);
        assert_eq!(tasks[0].max_retries, 0);
    }

    #[test]
    fn legacy_tasks_expand_with_index_dependencies_and_refuse_cycles() {
        let single = |dependencies: Vec<i64>| SingleTaskSubmission {
            cluster_slug: String::new(),
            identifier: Some(identifier("T", "v1.0")),
            input: b"{}".to_vec(),
            display: String::new(),
            dependencies,
            max_retries: 1,
        };
        let tasks = expand_legacy(&[single(vec![]), single(vec![0])], "d", LIMITS).unwrap();
        assert_eq!(tasks[1].depends_on, vec![0]);
        assert_eq!(tasks[0].display, "T");
        let error = expand_legacy(&[single(vec![1]), single(vec![0])], "d", LIMITS).unwrap_err();
        assert!(matches!(error, Error::LegacyCycle { .. }), "{error}");
        let error = expand_legacy(&[single(vec![3])], "d", LIMITS).unwrap_err();
        assert_eq!(
            error,
            Error::UnknownLegacyDependency {
                task: 0,
                dependency: 3
            }
        );
    }
}
