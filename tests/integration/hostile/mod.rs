//! Hostile and malformed input against the real binary: artifacts that try to escape their
//! directory or exhaust the runner, malformed `tilebox.workflow.toml`, task inputs that do
//! not decode, invalid identifiers, dependency cycles, over-limit inputs, missing or wrong
//! API keys, and runner objects that do not exist. Each ends in a clear error and changes
//! nothing it should not.
//!
//! Layout:
//! - `mod.rs`: helpers the areas share
//! - `artifacts.rs`: release artifacts that try to escape or exhaust the runner
//! - `inputs.rs`: malformed configs, undecodable inputs, bad identifiers, cycles, limits
//! - `clients.rs`: missing or wrong API keys, runner objects that do not exist
//! - `server_limits.rs`: message sizes, OTLP limits, open calls per connection, uploads cut short
//! - `releases.rs`: releases registering identifiers the server refuses, refused claims
//!   carrying results, version and retention arithmetic
//! - `limits_submit.rs`: submission limits (names, trace parents, displays, cluster slugs,
//!   tasks per submission)
//! - `loops.rs`: tasks that try to run forever (exceptions, invalid outcomes, runner failures)
//! - `backoff.rs`: a runner that cannot run a task backs off from it and serves other jobs;
//!   a release host killed while idle is replaced
//! - `stalls.rs`: releases that hang `uv sync` or their import, flood their pipes, or fail
//!   to prepare for a while

mod artifacts;
mod backoff;
mod clients;
mod inputs;
mod limits_submit;
mod loops;
mod releases;
mod server_limits;
mod stalls;

use std::io::Write;
use std::path::Path;

use crate::common::job_request;
use sha2::{Digest, Sha256};
use tilebox::api::workflows_v1::{QueryJobsRequest, SubmitJobRequest};
use tilebox::client::Client;

/// The code inside every hostile archive: a valid runner, so a refusal is the archive's fault.
pub(super) const HOSTILE_APP: &str = "from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
class Hostile(Task):\n    def execute(self, context: ExecutionContext) -> None:\n        pass\n\n\
runner = Runner(tasks=[Hostile])\n";

pub(super) const HELLO: &str = "from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
class Hello(Task):\n    def execute(self, context: ExecutionContext) -> None:\n        \
context.current_task.display = 'hello from the good release'\n\nrunner = Runner(tasks=[Hello])\n";

// ---- helpers ---------------------------------------------------------------------------------

/// Every file and directory under `root`, relative, sorted.
pub(super) fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, directory: &Path, found: &mut Vec<String>) {
        let Ok(entries) = fs_err::read_dir(directory) else {
            return;
        };
        for entry in entries {
            let entry = entry.expect("dir entry");
            let path = entry.path();
            found.push(
                path.strip_prefix(root)
                    .expect("below root")
                    .display()
                    .to_string(),
            );
            if entry.file_type().expect("file type").is_dir() {
                walk(root, &path, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(root, root, &mut found);
    found.sort();
    found
}

/// A job `one-task` of one task `name@version` with `input`, on the default cluster (the
/// job's name stays valid whatever the task's name).
pub(super) fn one_task_job(name: &str, version: &str, input: &[u8]) -> SubmitJobRequest {
    SubmitJobRequest {
        job_name: "one-task".into(),
        ..job_request(name, version, 1, input)
    }
}

pub(super) async fn job_count(client: &mut Client) -> usize {
    client
        .jobs
        .query_jobs(QueryJobsRequest::default())
        .await
        .expect("query jobs")
        .into_inner()
        .jobs
        .len()
}

// ---- archives --------------------------------------------------------------------------------

pub(super) const BLOCK: usize = 512;

/// A ustar header block: mode 0644, owner 0, mtime 0, a correct checksum.
pub(super) fn tar_header(path: &str, typeflag: u8, link: &str, size: u64) -> [u8; BLOCK] {
    assert!(
        path.len() <= 100 && link.len() <= 100,
        "ustar fields hold 100 bytes"
    );
    let mut block = [0u8; BLOCK];
    block[..path.len()].copy_from_slice(path.as_bytes());
    block[100..108].copy_from_slice(b"0000644\0");
    block[108..116].copy_from_slice(b"0000000\0");
    block[116..124].copy_from_slice(b"0000000\0");
    block[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    block[136..148].copy_from_slice(b"00000000000\0");
    block[156] = typeflag;
    block[157..157 + link.len()].copy_from_slice(link.as_bytes());
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    if matches!(typeflag, b'3' | b'4') {
        // /dev/null's device numbers.
        block[329..337].copy_from_slice(b"0000001\0");
        block[337..345].copy_from_slice(b"0000003\0");
    }
    block[148..156].fill(b' ');
    let checksum: u32 = block.iter().map(|&byte| u32::from(byte)).sum();
    block[148..156].copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());
    block
}

/// One tar entry: path, type flag, link target, data.
pub(super) struct Entry<'a>(
    pub(super) &'a str,
    pub(super) u8,
    pub(super) &'a str,
    pub(super) &'a [u8],
);

/// A tar stream of `entries`, without the end-of-archive blocks.
pub(super) fn tar_entries(entries: &[Entry]) -> Vec<u8> {
    let mut tar = Vec::new();
    for Entry(path, typeflag, link, data) in entries {
        tar.extend_from_slice(&tar_header(path, *typeflag, link, data.len() as u64));
        tar.extend_from_slice(data);
        tar.resize(tar.len().next_multiple_of(BLOCK), 0);
    }
    tar
}

/// A complete `.tar.zst` of `entries`.
pub(super) fn archive(entries: &[Entry]) -> Vec<u8> {
    let mut tar = tar_entries(entries);
    tar.extend_from_slice(&[0; 2 * BLOCK]);
    zstd::encode_all(&tar[..], 3).expect("zstd")
}

/// A small valid release archive followed, after its end, by `zeros` bytes of zeros: tiny
/// compressed, it unpacks past the runner's 4 GiB limit.
pub(super) fn zstd_bomb(zeros: u64) -> Vec<u8> {
    let mut encoder = zstd::Encoder::new(Vec::new(), 1).expect("zstd");
    encoder
        .write_all(&tar_entries(&[Entry(
            "app.py",
            b'0',
            "",
            HOSTILE_APP.as_bytes(),
        )]))
        .expect("compress");
    let chunk = vec![0u8; 1 << 20];
    let mut left = zeros;
    while left > 0 {
        let length = left.min(chunk.len() as u64) as usize;
        encoder.write_all(&chunk[..length]).expect("compress");
        left -= length as u64;
    }
    encoder.finish().expect("compress")
}

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

// ---- hostile artifacts -----------------------------------------------------------------------
