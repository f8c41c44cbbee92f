//! The limits one request may reach, in one place: what the server checks before it stores
//! anything (submissions, subtasks, claims) and what `build-release` and the runner check
//! before they advertise an identifier. Each refusal names what, the value and the limit.

/// Longest job name, in bytes. The hosted API documents none beyond "at least 1 character";
/// 256 bytes matches the longest identifier name and keeps a listing's row readable.
pub const MAX_JOB_NAME_BYTES: usize = 256;

/// Longest `trace_parent`, in bytes. A W3C traceparent of version `00` is exactly 55 bytes
/// (`00-<32 hex>-<16 hex>-<2 hex>`); later versions may append fields, so allow some room.
pub const MAX_TRACE_PARENT_BYTES: usize = 256;

/// Longest task display, in characters (the hosted API's limit, and the official SDK's cap on
/// failure displays).
pub const MAX_DISPLAY_CHARS: usize = 1024;

/// Longest cluster slug a submission may name, in bytes (the rule clusters are created
/// with: 1 to 100 lowercase letters, digits and inner dashes). Checked on the lookup, before a
/// slug is copied into any task.
pub const MAX_CLUSTER_SLUG_BYTES: usize = 100;

/// Most tasks one submission (a job, or the subtasks one execution submits) may hold, by
/// default (`tilebox server --max-tasks-per-submission`). The hosted docs ask for at most 64
/// subtasks per task and recommend recursive fan-out; the self-hosted server stores a large
/// fan-out in one transaction, and the fault tests fan out 50,000 leaves from one task, so
/// the default leaves room above that while bounding one report to about 200 MiB of inputs.
pub const DEFAULT_MAX_TASKS_PER_SUBMISSION: usize = 100_000;

/// Most identifiers one claim may advertise (each costs an index probe).
pub const MAX_IDENTIFIERS_PER_CLAIM: usize = 1_000;

/// Most reports one `Work` call may carry (the server refuses more; the runner sends its
/// reports in batches of at most this many).
pub const MAX_REPORTS_PER_CALL: usize = 10_000;

/// Largest major or minor version number: versions are stored as SQLite integers (`i64`).
pub const MAX_VERSION_NUMBER: u64 = i64::MAX as u64;

/// Longest task identifier version, in bytes: `v`, a dot and two numbers of at most 19
/// digits each ([`MAX_VERSION_NUMBER`]) take 40; leading zeros may take a little more.
/// Checked first, so a version of megabytes of digits is refused before it is copied.
pub const MAX_VERSION_BYTES: usize = 64;

/// Longest telemetry retention `tilebox server --telemetry-retention` accepts: 100 years of
/// 365.25 days (the year `humantime` parses). Far beyond it the cutoff would leave the range
/// of a millisecond timestamp.
pub const MAX_TELEMETRY_RETENTION: std::time::Duration =
    std::time::Duration::from_secs(100 * 31_557_600);
