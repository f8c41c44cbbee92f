//! Arbitrary task protocol messages, as runners send them, through the real scheduler on a
//! real SQLite store (in a temporary directory, shared by every run, holding a job whose
//! tasks claims can find): the first byte picks the message (`Work`, `NextTask`,
//! `TaskFailed`), the rest is its protobuf encoding. Never a panic; an answered `Work` has one
//! result per report and no more tasks than the call may claim; the store stays readable.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tilebox::api::selfhosted_v1::WorkRequest;
use tilebox::api::workflows_v1::{
    NextTaskRequest, SubmitJobRequest, TaskFailedRequest, TaskIdentifier, TaskSubmissionGroup,
    TaskSubmissions,
};
use tilebox::server::scheduler::{MAX_CLAIM_PER_CALL, Options, Scheduler, SubtaskClusters};
use tilebox::server::store::sqlite::SqliteStore;

struct Harness {
    runtime: tokio::runtime::Runtime,
    scheduler: Scheduler,
    _directory: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let directory = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(directory.path()).expect("store");
        let options = Options {
            long_poll: Duration::ZERO,
            ..Options::default()
        };
        let scheduler = Scheduler::new(Arc::new(store), options, tilebox::server::signals::Signals::local());
        let count = 64;
        let job = SubmitJobRequest {
            job_name: "fuzz".into(),
            tasks: Some(TaskSubmissions {
                task_groups: vec![TaskSubmissionGroup {
                    inputs: vec![b"{}".to_vec(); count],
                    identifier_pointers: vec![0; count],
                    cluster_slug_pointers: vec![0; count],
                    display_pointers: vec![0; count],
                    max_retries_values: vec![1; count],
                    optional_values: vec![false; count],
                    ..TaskSubmissionGroup::default()
                }],
                cluster_slug_lookup: vec![String::new()],
                identifier_lookup: vec![TaskIdentifier {
                    name: "Fuzz".into(),
                    version: "v1.0".into(),
                }],
                display_lookup: vec!["Fuzz".into()],
            }),
            ..SubmitJobRequest::default()
        };
        runtime
            .block_on(scheduler.submit_job(job))
            .expect("the seed job is valid");
        Harness {
            runtime,
            scheduler,
            _directory: directory,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, message)) = data.split_first() else {
        return;
    };
    let harness = harness();
    let scheduler = &harness.scheduler;
    harness.runtime.block_on(async {
        match kind % 3 {
            0 => {
                let Ok(request) = WorkRequest::decode(message) else {
                    return;
                };
                let reports = request.reports.len();
                let capacity = request.capacity as usize + request.prefetch as usize;
                if let Ok(answer) = scheduler
                    .work(request, "fuzz".into(), &SubtaskClusters::Any)
                    .await
                {
                    assert_eq!(answer.results.len(), reports);
                    assert!(answer.tasks.len() <= capacity.min(MAX_CLAIM_PER_CALL));
                }
            }
            1 => {
                let Ok(request) = NextTaskRequest::decode(message) else {
                    return;
                };
                let _ = scheduler
                    .next_task(request, "fuzz".into(), &SubtaskClusters::Any)
                    .await;
            }
            _ => {
                let Ok(request) = TaskFailedRequest::decode(message) else {
                    return;
                };
                let _ = scheduler.task_failed(request, "fuzz".into()).await;
            }
        }
        scheduler
            .store()
            .list_clusters()
            .await
            .expect("the store stays readable");
    });
});
