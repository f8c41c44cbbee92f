//! Validation of task submissions (`TaskSubmissions` and the legacy single-task list) into
//! the flat list of tasks the store inserts. Pure: no I/O. The server applies it to jobs and
//! to the subtasks a task submits; `task run` applies the same rules locally.

use std::collections::HashSet;

use uuid::Uuid;

use super::limits::{
    DEFAULT_MAX_TASKS_PER_SUBMISSION, MAX_CLUSTER_SLUG_BYTES, MAX_DISPLAY_CHARS,
    MAX_JOB_NAME_BYTES, MAX_TRACE_PARENT_BYTES, MAX_VERSION_BYTES, MAX_VERSION_NUMBER,
};
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
    #[error("display name {index} is {chars} characters long; the limit is {MAX_DISPLAY_CHARS}")]
    DisplayTooLong { index: usize, chars: usize },
    #[error("cluster slug {index} is {bytes} bytes long; the limit is {MAX_CLUSTER_SLUG_BYTES}")]
    ClusterSlugTooLong { index: usize, bytes: usize },
    #[error("the submission holds {count} tasks; the limit is {limit}")]
    TooManyTasks { count: usize, limit: usize },
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
    #[error(
        "key `{key}` may not put subtasks on cluster `{cluster}`: it serves {clusters}; use a key that serves both clusters"
    )]
    ClusterNotServed {
        key: String,
        cluster: String,
        clusters: String,
    },
}

/// Why a job's name or trace parent was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("job_name must not be empty")]
    EmptyName,
    #[error("job_name is {0} bytes long; the limit is {MAX_JOB_NAME_BYTES}")]
    NameTooLong(usize),
    #[error("trace_parent is {0} bytes long; the limit is {MAX_TRACE_PARENT_BYTES}")]
    TraceParentTooLong(usize),
    #[error(
        "trace_parent {value:?} is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>, lowercase): {reason}"
    )]
    TraceParent { value: String, reason: &'static str },
}

/// Checks a job's name (1 to [`MAX_JOB_NAME_BYTES`]) and its trace parent: empty (none) or a
/// W3C traceparent (<https://www.w3.org/TR/trace-context/#traceparent-header>).
pub fn check_job(name: &str, trace_parent: &str) -> Result<(), JobError> {
    if name.is_empty() {
        return Err(JobError::EmptyName);
    }
    if name.len() > MAX_JOB_NAME_BYTES {
        return Err(JobError::NameTooLong(name.len()));
    }
    if trace_parent.len() > MAX_TRACE_PARENT_BYTES {
        return Err(JobError::TraceParentTooLong(trace_parent.len()));
    }
    if trace_parent.is_empty() {
        return Ok(());
    }
    check_trace_parent(trace_parent).map_err(|reason| JobError::TraceParent {
        value: trace_parent.to_string(),
        reason,
    })
}

/// The W3C rules: `version-traceid-parentid-flags`, lowercase hex fields of 2, 32, 16 and 2
/// digits, neither id all zeros, version `ff` invalid; version `00` has exactly these four
/// fields, a later version may append more after a `-`.
fn check_trace_parent(value: &str) -> Result<(), &'static str> {
    let hex = |field: &str, length: usize| {
        field.len() == length
            && field
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    };
    if !value.is_ascii() {
        return Err("it holds non-ASCII characters");
    }
    let (head, rest) = value.split_at(value.len().min(55));
    let fields: Vec<&str> = head.split('-').collect();
    let [version, trace_id, parent_id, flags] = fields[..] else {
        return Err("it needs four fields separated by `-`");
    };
    if !hex(version, 2) || version == "ff" {
        return Err("the version must be two lowercase hex digits other than ff");
    }
    if !hex(trace_id, 32) {
        return Err("the trace id must be 32 lowercase hex digits");
    }
    if !hex(parent_id, 16) {
        return Err("the parent id must be 16 lowercase hex digits");
    }
    if !hex(flags, 2) {
        return Err("the flags must be two lowercase hex digits");
    }
    if trace_id.bytes().all(|byte| byte == b'0') {
        return Err("the trace id must not be all zeros");
    }
    if parent_id.bytes().all(|byte| byte == b'0') {
        return Err("the parent id must not be all zeros");
    }
    if !rest.is_empty() && (version == "00" || !rest.starts_with('-')) {
        return Err("unexpected characters after the flags");
    }
    Ok(())
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
    #[error(
        "task identifier `{name}` has version `{version}`; major and minor may be at most {MAX_VERSION_NUMBER}"
    )]
    VersionOutOfRange { name: String, version: String },
    #[error(
        "task identifier `{name}` has a version of {bytes} bytes (`{start}…`); the limit is {MAX_VERSION_BYTES}"
    )]
    VersionLength {
        name: String,
        bytes: usize,
        /// The version's first characters, to recognise it by.
        start: String,
    },
}

/// Parses and validates a task identifier.
pub fn parse_identifier(identifier: &TaskIdentifier) -> Result<Identifier, IdentifierError> {
    let name = &identifier.name;
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(IdentifierError::NameLength(name.len()));
    }
    if identifier.version.len() > MAX_VERSION_BYTES {
        return Err(IdentifierError::VersionLength {
            name: name.clone(),
            bytes: identifier.version.len(),
            start: identifier.version.chars().take(16).collect(),
        });
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
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit());
    if !digits(major) || !digits(minor) {
        return Err(invalid());
    }
    // Digits only, so a parse fails only by overflow; the store keeps versions as `i64`.
    let number = |text: &str| {
        text.parse::<u64>()
            .ok()
            .filter(|number| *number <= MAX_VERSION_NUMBER)
            .ok_or_else(|| IdentifierError::VersionOutOfRange {
                name: name.clone(),
                version: identifier.version.clone(),
            })
    };
    Ok(Identifier {
        name: name.clone(),
        version: identifier.version.clone(),
        major: number(major)?,
        minor: number(minor)?,
    })
}

/// The largest task input accepted by default, in bytes.
pub const DEFAULT_MAX_INPUT_BYTES: usize = 2048;

/// Limits a submission is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_input_bytes: usize,
    /// Most tasks one submission may hold.
    pub max_tasks: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_input_bytes: DEFAULT_MAX_INPUT_BYTES,
            max_tasks: DEFAULT_MAX_TASKS_PER_SUBMISSION,
        }
    }
}

/// Checks the sizes of a submission's lookups before any of their strings is copied into a
/// task: every display and cluster slug within its limit.
fn check_lookups(displays: &[String], clusters: &[String]) -> Result<(), Error> {
    if let Some(index) = displays.iter().position(String::is_empty) {
        return Err(Error::EmptyDisplay { index });
    }
    for (index, display) in displays.iter().enumerate() {
        // More bytes than the limit allows characters is the cheap test; count only then.
        if display.len() > MAX_DISPLAY_CHARS {
            let chars = display.chars().count();
            if chars > MAX_DISPLAY_CHARS {
                return Err(Error::DisplayTooLong { index, chars });
            }
        }
    }
    if let Some((index, slug)) = clusters
        .iter()
        .enumerate()
        .find(|(_, slug)| slug.len() > MAX_CLUSTER_SLUG_BYTES)
    {
        return Err(Error::ClusterSlugTooLong {
            index,
            bytes: slug.len(),
        });
    }
    Ok(())
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
    let count = groups.iter().fold(0usize, |count, group| {
        count.saturating_add(group.inputs.len())
    });
    if count > limits.max_tasks {
        return Err(Error::TooManyTasks {
            count,
            limit: limits.max_tasks,
        });
    }
    let identifiers = submissions
        .identifier_lookup
        .iter()
        .map(parse_identifier)
        .collect::<Result<Vec<_>, _>>()?;
    check_lookups(
        &submissions.display_lookup,
        &submissions.cluster_slug_lookup,
    )?;
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
    let mut tasks = Vec::with_capacity(count);
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
    if submissions.len() > limits.max_tasks {
        return Err(Error::TooManyTasks {
            count: submissions.len(),
            limit: limits.max_tasks,
        });
    }
    for (index, submission) in submissions.iter().enumerate() {
        // An empty display becomes the identifier's name, which has its own limit.
        let chars = submission.display.chars().count();
        if chars > MAX_DISPLAY_CHARS {
            return Err(Error::DisplayTooLong { index, chars });
        }
        if submission.cluster_slug.len() > MAX_CLUSTER_SLUG_BYTES {
            return Err(Error::ClusterSlugTooLong {
                index,
                bytes: submission.cluster_slug.len(),
            });
        }
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
        max_tasks: 10,
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
    fn versions_beyond_the_stored_range_are_refused() {
        let parsed =
            parse_identifier(&identifier("T", "v9223372036854775807.9223372036854775807")).unwrap();
        assert_eq!(parsed.major, i64::MAX as u64);
        for bad in [
            "v1.9223372036854775808",
            "v9223372036854775808.0",
            "v99999999999999999999.0",
        ] {
            let error = parse_identifier(&identifier("T", bad)).unwrap_err();
            assert!(
                matches!(error, IdentifierError::VersionOutOfRange { .. }),
                "{bad}: {error}"
            );
            assert!(error.to_string().contains("at most 9223372036854775807"));
        }
    }

    #[test]
    fn a_version_over_its_length_limit_is_refused_before_it_is_parsed_or_echoed() {
        let longest = format!("v{}.{}", "0".repeat(31), "0".repeat(31));
        assert_eq!(longest.len(), MAX_VERSION_BYTES);
        assert!(parse_identifier(&identifier("T", &longest)).is_ok());
        let huge = format!("v{}1.0", "0".repeat(10_000_000));
        let error = parse_identifier(&identifier("T", &huge)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "task identifier `T` has a version of 10000004 bytes (`v000000000000000…`); the limit is 64"
        );
    }

    #[test]
    fn trace_parents_are_empty_or_w3c() {
        let name = "job";
        for good in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future",
        ] {
            assert_eq!(check_job(name, good), Ok(()), "{good}");
        }
        for (bad, reason) in [
            ("x", "four fields"),
            (
                "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
                "trace id",
            ),
            (
                "00-00000000000000000000000000000000-b7ad6b7169203331-01",
                "all zeros",
            ),
            (
                "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
                "all zeros",
            ),
            (
                "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "version",
            ),
            (
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
                "after the flags",
            ),
            (
                "00-0af7651916cd43dd8448eb211c8031é-b7ad6b7169203331-01",
                "non-ASCII",
            ),
            (
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-011",
                "parent id",
            ),
        ] {
            let error = check_job(name, bad).unwrap_err();
            assert!(error.to_string().contains(reason), "{bad}: {error}");
        }
        assert_eq!(
            check_job(name, &"0".repeat(257)),
            Err(JobError::TraceParentTooLong(257))
        );
        assert_eq!(check_job("", ""), Err(JobError::EmptyName));
        assert_eq!(
            check_job(&"n".repeat(257), ""),
            Err(JobError::NameTooLong(257))
        );
    }

    #[test]
    fn long_displays_long_cluster_slugs_and_too_many_tasks_are_refused_before_expansion() {
        let mut long = submissions(vec![group(&["1"], &[])]);
        long.display_lookup = vec!["é".repeat(1024)];
        assert!(expand(&long, "c", LIMITS).is_ok(), "1,024 characters fit");
        long.display_lookup = vec!["é".repeat(1025)];
        assert_eq!(
            expand(&long, "c", LIMITS).unwrap_err(),
            Error::DisplayTooLong {
                index: 0,
                chars: 1025
            }
        );
        let mut slug = submissions(vec![group(&["1"; 10], &[])]);
        slug.cluster_slug_lookup = vec!["c".repeat(10 << 20)];
        let error = expand(&slug, "c", LIMITS).unwrap_err();
        assert_eq!(
            error,
            Error::ClusterSlugTooLong {
                index: 0,
                bytes: 10 << 20
            }
        );
        assert_eq!(
            error.to_string(),
            "cluster slug 0 is 10485760 bytes long; the limit is 100"
        );
        let many = submissions(vec![group(&["1"; 6], &[]), group(&["1"; 5], &[])]);
        assert_eq!(
            expand(&many, "c", LIMITS).unwrap_err(),
            Error::TooManyTasks {
                count: 11,
                limit: 10
            }
        );
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
