//! Conversions between wire values and plain Rust values.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use super::limits::MAX_DISPLAY_CHARS;
use super::tilebox_v1::Id;
use super::workflows_v1::{JobState, TaskState};

/// A failed task's display as the SDK writes it: `"<display>\n<reason>"`, cut to
/// [`MAX_DISPLAY_CHARS`] characters.
pub fn failure_display(display: &str, reason: &str) -> String {
    format!("{display}\n{reason}")
        .chars()
        .take(MAX_DISPLAY_CHARS)
        .collect()
}

pub fn id(uuid: Uuid) -> Id {
    Id {
        uuid: uuid.as_bytes().to_vec(),
    }
}

/// The UUID in a wire id: `Ok(None)` for an absent or empty id, `Err` for one that is not 16 bytes.
pub fn uuid_of(id: Option<&Id>) -> Result<Option<Uuid>, InvalidId> {
    match id {
        None => Ok(None),
        Some(id) if id.uuid.is_empty() => Ok(None),
        Some(id) => Uuid::from_slice(&id.uuid).map(Some).map_err(|_| InvalidId {
            length: id.uuid.len(),
        }),
    }
}

/// A wire id that is not a 16-byte UUID.
#[derive(Debug, thiserror::Error)]
#[error("id must be a 16-byte UUID, got {length} bytes")]
pub struct InvalidId {
    pub length: usize,
}

/// A protobuf timestamp from milliseconds since the Unix epoch.
pub fn timestamp_from_millis(millis: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Milliseconds since the Unix epoch of a protobuf timestamp; saturating, as clients may
/// send any seconds.
pub fn millis_from_timestamp(timestamp: &prost_types::Timestamp) -> i64 {
    timestamp
        .seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(timestamp.nanos) / 1_000_000)
}

/// A protobuf duration from a std duration.
pub fn duration(value: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: value.as_secs() as i64,
        nanos: value.subsec_nanos() as i32,
    }
}

/// A std duration from a protobuf duration; negative values clamp to zero.
pub fn std_duration(value: &prost_types::Duration) -> Duration {
    if value.seconds < 0 || (value.seconds == 0 && value.nanos <= 0) {
        return Duration::ZERO;
    }
    Duration::new(value.seconds as u64, value.nanos.max(0) as u32)
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The lowercase name of a job state, as the CLI prints it (`submitted`, `running`, ...).
pub fn job_state_name(state: JobState) -> &'static str {
    match state {
        JobState::Unspecified => "unspecified",
        JobState::Submitted => "submitted",
        JobState::Running => "running",
        JobState::Started => "started",
        JobState::Completed => "completed",
        JobState::Failed => "failed",
        JobState::Canceled => "canceled",
    }
}

/// The lowercase name of a task state, as the CLI prints it (`queued`, `failed_optional`, ...).
pub fn task_state_name(state: TaskState) -> &'static str {
    match state {
        TaskState::Unspecified => "unspecified",
        TaskState::Queued => "queued",
        TaskState::Running => "running",
        TaskState::Computed => "computed",
        TaskState::Failed => "failed",
        TaskState::Skipped => "skipped",
        TaskState::FailedOptional => "failed_optional",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_at_the_edges_saturate() {
        let at = |seconds| prost_types::Timestamp { seconds, nanos: 0 };
        assert_eq!(millis_from_timestamp(&at(i64::MAX)), i64::MAX);
        assert_eq!(millis_from_timestamp(&at(i64::MIN)), i64::MIN);
        assert_eq!(millis_from_timestamp(&at(2)), 2000);
    }

    #[test]
    fn timestamps_round_trip_through_millis() {
        for millis in [0, 1, 999, 1_000, 1_700_000_000_123, -1] {
            assert_eq!(
                millis_from_timestamp(&timestamp_from_millis(millis)),
                millis
            );
        }
    }

    #[test]
    fn empty_id_is_none_and_short_id_is_an_error() {
        assert_eq!(uuid_of(None).unwrap(), None);
        assert_eq!(uuid_of(Some(&Id { uuid: vec![] })).unwrap(), None);
        assert!(
            uuid_of(Some(&Id {
                uuid: vec![1, 2, 3]
            }))
            .is_err()
        );
        let uuid = Uuid::new_v4();
        assert_eq!(uuid_of(Some(&id(uuid))).unwrap(), Some(uuid));
    }
}
