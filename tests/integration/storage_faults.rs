//! Storage faults against the real binary: the server's data directory on a small tmpfs
//! that fills up. Writes are refused with a clear error, nothing acknowledged is lost, no
//! refused write half-applies, reads keep working, uploads leave nothing behind, and writes
//! resume when space returns. Needs `mount` (root); without it the test says so and skips.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use tilebox::api::convert::id;
use tilebox::api::selfhosted_v1::UploadArtifactRequest;
use tilebox::api::tilebox_v1::Pagination;
use tilebox::api::workflows_v1::{GetJobRequest, QueryJobsRequest};
use tilebox::client::Client;
use uuid::Uuid;

use crate::common::{TestServer, client, job_request, list_tasks, uuid_of_id};

/// Tasks per submitted job: a refused submission must leave none of them.
const TASKS_PER_JOB: usize = 40;

/// A tmpfs mounted on a directory, lazily unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(directory: &Path, size: &str) -> Result<Self, String> {
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(directory)
            .output()
            .map_err(|error| format!("cannot run mount: {error}"))?;
        if output.status.success() {
            Ok(Self(directory.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until the filesystem is full; answers the bytes written.
fn fill(path: &Path) -> u64 {
    let mut file = fs_err::File::create(path).expect("create the filler");
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut written = 0;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(count) => written += count as u64,
            Err(error) if error.kind() == std::io::ErrorKind::StorageFull => break,
            Err(error) => panic!("filling the disk failed: {error}"),
        }
    }
    let _ = file.sync_all();
    written
}

async fn job_count(client: &mut Client) -> usize {
    let mut count = 0;
    let mut after = None;
    loop {
        let page = client
            .jobs
            .query_jobs(QueryJobsRequest {
                page: Some(Pagination {
                    limit: Some(1000),
                    starting_after: after,
                }),
                ..QueryJobsRequest::default()
            })
            .await
            .expect("query jobs while the disk is full")
            .into_inner();
        count += page.jobs.len();
        match page.next_page.and_then(|page| page.starting_after) {
            Some(next) if !page.jobs.is_empty() => after = Some(next),
            _ => return count,
        }
    }
}

/// Every acknowledged job is there with all its tasks, and nothing else is.
async fn assert_only_acknowledged_jobs(client: &mut Client, acknowledged: &[Uuid]) {
    for job in acknowledged {
        client
            .jobs
            .get_job(GetJobRequest {
                job_id: Some(id(*job)),
            })
            .await
            .unwrap_or_else(|status| panic!("acknowledged job {job} is not readable: {status}"));
        assert_eq!(list_tasks(client, *job, None).await.len(), TASKS_PER_JOB);
    }
    assert_eq!(
        job_count(client).await,
        acknowledged.len(),
        "exactly the acknowledged jobs are stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_clearly_loses_nothing_and_recovers() {
    let mut server = TestServer::start();
    // Move the data directory onto an 8 MiB tmpfs: stop, mount over it, start again.
    server.kill();
    let data = server.data_dir().to_path_buf();
    let _tmpfs = match Tmpfs::mount(&data, "8m") {
        Ok(tmpfs) => tmpfs,
        Err(reason) => {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs on {}: {reason}",
                data.display()
            );
            return;
        }
    };
    server.restart();
    let mut client = client(&server).await;
    let input = vec![b'x'; 1024];

    let mut acknowledged = Vec::new();
    for _ in 0..3 {
        let job = client
            .jobs
            .submit_job(job_request("Full", "v1.0", TASKS_PER_JOB, &input))
            .await
            .expect("a submission with space left")
            .into_inner();
        acknowledged.push(uuid_of_id(job.id.as_ref()));
    }

    // Leave 1 MiB, then submit until the server refuses.
    let headroom = data.join("headroom");
    fs_err::write(&headroom, vec![0u8; 1024 * 1024]).expect("headroom");
    assert!(fill(&data.join("filler")) > 0);
    fs_err::remove_file(&headroom).expect("free the headroom");
    let refusal = loop {
        assert!(acknowledged.len() < 2_000, "1 MiB never filled up");
        match client
            .jobs
            .submit_job(job_request("Full", "v1.0", TASKS_PER_JOB, &input))
            .await
        {
            Ok(job) => acknowledged.push(uuid_of_id(job.into_inner().id.as_ref())),
            Err(status) => break status,
        }
    };
    assert_eq!(
        refusal.code(),
        tonic::Code::ResourceExhausted,
        "{refusal:?}\n{}",
        server.stderr_tail()
    );
    assert!(
        refusal.message().contains("disk is full") && refusal.message().contains("SQLITE_FULL"),
        "{}",
        refusal.message()
    );
    // More attempts while full: each refused the same way, none half-applied.
    for _ in 0..5 {
        let status = client
            .jobs
            .submit_job(job_request("Full", "v1.0", TASKS_PER_JOB, &input))
            .await
            .expect_err("the disk is still full");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    }

    // Reads keep working, and show exactly what was acknowledged.
    assert_only_acknowledged_jobs(&mut client, &acknowledged).await;

    // An upload is refused too, and leaves no temporary file.
    let bytes = vec![3u8; 2 * 1024 * 1024];
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    let upload = client
        .artifacts
        .upload_artifact(tokio_stream::iter(
            bytes
                .chunks(256 * 1024)
                .enumerate()
                .map(|(index, chunk)| UploadArtifactRequest {
                    digest: if index == 0 {
                        digest.clone()
                    } else {
                        String::new()
                    },
                    size: if index == 0 { bytes.len() as u64 } else { 0 },
                    chunk: chunk.to_vec(),
                })
                .collect::<Vec<_>>(),
        ))
        .await
        .expect_err("an upload onto a full disk");
    assert_eq!(upload.code(), tonic::Code::ResourceExhausted, "{upload:?}");
    assert!(
        upload.message().contains("disk is full"),
        "{}",
        upload.message()
    );
    let leftovers: Vec<_> = fs_err::read_dir(data.join("artifacts"))
        .map(|entries| {
            entries
                .map(|entry| entry.expect("entry").file_name())
                .collect()
        })
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Space returns: writes resume, and everything acknowledged survives a restart.
    fs_err::remove_file(data.join("filler")).expect("free the disk");
    let job = client
        .jobs
        .submit_job(job_request("Full", "v1.0", TASKS_PER_JOB, &input))
        .await
        .expect("a submission once space returned")
        .into_inner();
    acknowledged.push(uuid_of_id(job.id.as_ref()));
    server.restart();
    let mut client = crate::common::client(&server).await;
    assert_only_acknowledged_jobs(&mut client, &acknowledged).await;
}
