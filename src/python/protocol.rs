//! What crosses into and out of a hosted release: plain Rust data, serializable so the
//! child-process host speaks the same types over its pipe. No Python object ever leaves
//! the interpreter that made it.

use serde::{Deserialize, Serialize};

/// One task to execute.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRequest {
    pub name: String,
    pub version: String,
    #[serde(with = "base64_bytes")]
    pub input: Vec<u8>,
    pub id: String,
    pub display: String,
    pub retry_count: i64,
    pub parent_id: Option<String>,
    pub depends_on: Vec<String>,
    pub job: JobInfo,
    /// The cluster subtasks without an explicit cluster go to.
    pub cluster: String,
}

/// The job a task belongs to, as the task sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobInfo {
    pub id: String,
    pub name: String,
    pub trace_parent: String,
}

/// A progress indicator of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub label: Option<String>,
    pub total: u64,
    pub done: u64,
}

/// Subtasks a task submitted, grouped as `workflows.v1.TaskSubmissions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Submissions {
    pub task_groups: Vec<SubmissionGroup>,
    pub cluster_slug_lookup: Vec<String>,
    pub identifier_lookup: Vec<(String, String)>,
    pub display_lookup: Vec<String>,
}

/// One group of `Submissions`; the vectors are parallel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubmissionGroup {
    pub dependencies_on_other_groups: Vec<u32>,
    #[serde(with = "base64_list")]
    pub inputs: Vec<Vec<u8>>,
    pub identifier_pointers: Vec<u64>,
    pub cluster_slug_pointers: Vec<u64>,
    pub display_pointers: Vec<u64>,
    pub max_retries_values: Vec<i64>,
    pub optional_values: Vec<bool>,
}

/// A Python exception, made plain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exception {
    /// The exception's type name, e.g. `ValueError`.
    pub kind: String,
    pub message: String,
    pub traceback: String,
}

impl std::fmt::Display for Exception {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.is_empty() {
            write!(formatter, "{}", self.kind)
        } else {
            write!(formatter, "{}: {}", self.kind, self.message)
        }
    }
}

/// How a task execution ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum TaskOutcome {
    Computed {
        display: String,
        progress: Vec<Progress>,
        subtasks: Option<Submissions>,
    },
    Failed {
        /// `"<display>\n<repr(exception)>"`, at most 1024 characters.
        display: String,
        /// True when the task's own code failed; false when it could not run (unknown
        /// identifier, host problem).
        workflow_error: bool,
        progress: Vec<Progress>,
        error: Option<Exception>,
    },
}

/// Something a running task emitted: a log record or a progress change, as the JSON text
/// the runtime wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `log` or `progress`.
    pub kind: String,
    pub payload: String,
}

/// Standard base64 (with padding) for byte fields in JSON.
mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn encode(bytes: &[u8]) -> String {
        STANDARD.encode(bytes)
    }

    pub fn decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
        STANDARD.decode(text)
    }

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        decode(&text).map_err(serde::de::Error::custom)
    }
}

mod base64_list {
    use serde::{Deserialize, Deserializer, Serializer, ser::SerializeSeq};

    pub fn serialize<S: Serializer>(items: &[Vec<u8>], serializer: S) -> Result<S::Ok, S::Error> {
        let mut sequence = serializer.serialize_seq(Some(items.len()))?;
        for item in items {
            sequence.serialize_element(&super::base64_bytes::encode(item))?;
        }
        sequence.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Vec<u8>>, D::Error> {
        Vec::<String>::deserialize(deserializer)?
            .iter()
            .map(|text| super::base64_bytes::decode(text).map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_round_trips() {
        assert_eq!(base64_bytes::encode(b"\x00\x01\xff"), "AAH/");
        assert_eq!(base64_bytes::encode(b"ab"), "YWI=");
        assert_eq!(base64_bytes::encode(b""), "");
        for bytes in [&b""[..], b"a", b"ab", b"abc", b"\x00\xff\x10\x80"] {
            assert_eq!(
                base64_bytes::decode(&base64_bytes::encode(bytes)).unwrap(),
                bytes
            );
        }
    }

    #[test]
    fn base64_refuses_padding_in_the_middle() {
        assert!(base64_bytes::decode("YQ==YQ==").is_err());
        assert!(base64_bytes::decode("Y=Q=").is_err());
    }

    #[test]
    fn outcomes_round_trip_through_json() {
        let outcome = TaskOutcome::Computed {
            display: "Root".into(),
            progress: vec![Progress {
                label: None,
                total: 2,
                done: 1,
            }],
            subtasks: Some(Submissions {
                task_groups: vec![SubmissionGroup {
                    inputs: vec![b"\"x\"".to_vec(), vec![]],
                    ..Default::default()
                }],
                ..Default::default()
            }),
        };
        let text = serde_json::to_string(&outcome).unwrap();
        assert_eq!(serde_json::from_str::<TaskOutcome>(&text).unwrap(), outcome);
    }
}
