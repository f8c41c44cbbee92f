//! A store-level drain of a large fan-out, without server or runner: a root task reports
//! `TILEBOX_DRAIN_TASKS` subtasks in one report, then workers claim and complete them
//! through the `Store` trait as a runner's slots do through the scheduler (a cluster read,
//! then each report sent with the next claim), beside the server's lease reaper and the
//! runner's span exports; a monitor prints tasks/s every second.
//!
//! It is `#[ignore]`d (it takes a while and prints timings); run it in release, as the
//! server runs:
//!
//! ```text
//! cargo test --release --lib drain_of_a_large_fan_out -- --ignored --nocapture
//! ```
//!
//! It asserts only what happened (every task computed once, the job completed), never a time.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::{DATABASE_FILE, SqliteStore};
use crate::api::convert::now_millis;
use crate::api::workflows_v1::{JobState, TaskState};
use crate::server::store::{
    ClaimRequest, ComputedReport, DEFAULT_CLUSTER_SLUG, Identifier, JobFilter, NewJob, NewTask,
    Page, Store, TelemetryKind, TelemetryRecord,
};

/// How many subtasks the root submits (default 100,000).
const DRAIN_TASKS: &str = "TILEBOX_DRAIN_TASKS";
/// How many workers claim and complete tasks (default 2, as `runner start -n 2`).
const DRAIN_WORKERS: &str = "TILEBOX_DRAIN_WORKERS";
/// When set, a reader also polls the job every 2 s as the benchmark does (`job list --name`).
const DRAIN_POLL: &str = "TILEBOX_DRAIN_POLL";
/// The directory the store's temp dir is made in (default: the system's temp dir); e.g.
/// `/dev/shm` to take the disk out.
const DRAIN_DIR: &str = "TILEBOX_DRAIN_DIR";

fn identifier(name: &str) -> Identifier {
    Identifier {
        name: name.to_string(),
        version: "v1.0".to_string(),
        major: 1,
        minor: 0,
    }
}

fn new_task(name: &str, input: Vec<u8>) -> NewTask {
    NewTask {
        id: Uuid::now_v7(),
        identifier: identifier(name),
        input,
        display: name.to_string(),
        cluster: DEFAULT_CLUSTER_SLUG.to_string(),
        max_retries: 0,
        optional: false,
        depends_on: Vec::new(),
    }
}

fn claim_request(claimant: &str) -> ClaimRequest {
    ClaimRequest {
        cluster: DEFAULT_CLUSTER_SLUG.to_string(),
        identifiers: vec![identifier("FanOut"), identifier("Leaf")],
        claimant: claimant.to_string(),
        lease: Duration::from_secs(300),
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// The WAL's last frame, from the wal-index header in the `-shm` file (`mxFrame`, byte 16,
/// native order), read without a lock: a monitor's estimate. It drops back to 0 when a
/// writer restarts the WAL after a complete checkpoint.
fn wal_frames(shm: &Path) -> u32 {
    fs_err::read(shm)
        .ok()
        .and_then(|bytes| Some(u32::from_ne_bytes(bytes.get(16..20)?.try_into().ok()?)))
        .unwrap_or(0)
}

/// A `/proc/self/status` field in KiB (`VmRSS`, `VmHWM`), 0 where there is none.
fn memory_kib(field: &str) -> u64 {
    let status = fs_err::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system) of this process so far.
fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes into the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |value: libc::timeval| {
        Duration::from_secs(value.tv_sec as u64) + Duration::from_micros(value.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// What the workers and helpers count for the monitor.
#[derive(Default)]
struct Counts {
    done: AtomicU64,
    /// Summed duration of the workers' `report_and_claim` calls, in µs.
    call_micros: AtomicU64,
    /// The longest `expire_leases` since the monitor last looked, in µs.
    expire_micros: AtomicU64,
    finished: AtomicBool,
    /// When each quarter of the tasks was done.
    quarters: Mutex<Vec<Instant>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run in release with --ignored --nocapture"]
async fn drain_of_a_large_fan_out() {
    let tasks = env_number(DRAIN_TASKS, 100_000);
    let workers = env_number(DRAIN_WORKERS, 2);
    let poll = std::env::var_os(DRAIN_POLL).is_some();
    let parent = std::env::var_os(DRAIN_DIR)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let directory = tempfile::tempdir_in(parent).expect("temp dir");
    let store = SqliteStore::open(directory.path()).expect("open store");
    let shm = directory.path().join(format!("{DATABASE_FILE}-shm"));

    let job = NewJob {
        id: Uuid::now_v7(),
        name: "drain".to_string(),
        trace_parent: String::new(),
        tasks: vec![new_task("FanOut", tasks.to_string().into_bytes())],
    };
    let job_id = job.id;
    store.submit_job(job).await.expect("submit");
    let (_, root) = store
        .report_and_claim(None, Some(claim_request("root")))
        .await
        .expect("claim the root");
    let root = root.expect("the root is claimable");
    let subtasks: Vec<NewTask> = (0..tasks)
        .map(|index| new_task("Leaf", format!("{{\"index\": {index}}}").into_bytes()))
        .collect();
    let report = ComputedReport {
        task_id: root.id,
        claimant: "root".to_string(),
        display: "FanOut".to_string(),
        progress: Vec::new(),
        subtasks,
    };
    let resident = memory_kib("VmRSS");
    let reported = Instant::now();
    store
        .report_and_claim(Some(report), None)
        .await
        .expect("report the root");
    println!(
        "report of {tasks} subtasks: {:.3} s; resident before {} MiB, peak after {} MiB",
        reported.elapsed().as_secs_f64(),
        resident >> 10,
        memory_kib("VmHWM") >> 10
    );

    let counts = Arc::new(Counts::default());
    let drain_started = Instant::now();
    let mut running = tokio::task::JoinSet::new();
    for worker in 0..workers {
        let store = store.clone();
        let counts = counts.clone();
        running.spawn(async move {
            let claimant = format!("worker-{worker}");
            let request = claim_request(&claimant);
            let mut pending: Option<ComputedReport> = None;
            loop {
                // What `Scheduler::next_task` reads before every claim.
                store
                    .get_cluster(DEFAULT_CLUSTER_SLUG)
                    .await
                    .expect("get cluster");
                let called = Instant::now();
                let (_, claimed) = store
                    .report_and_claim(pending.take(), Some(request.clone()))
                    .await
                    .expect("report and claim");
                let micros = called.elapsed().as_micros() as u64;
                counts.call_micros.fetch_add(micros, Ordering::Relaxed);
                let Some(claimed) = claimed else { break };
                pending = Some(ComputedReport {
                    task_id: claimed.id,
                    claimant: claimant.clone(),
                    display: claimed.display,
                    progress: Vec::new(),
                    subtasks: Vec::new(),
                });
                let done = counts.done.fetch_add(1, Ordering::Relaxed) + 1;
                if done % (tasks / 4).max(1) == 0 {
                    counts.quarters.lock().expect("lock").push(Instant::now());
                }
            }
        });
    }
    // The server's lease reaper: expire, then read the next deadline, about every second.
    {
        let store = store.clone();
        let counts = counts.clone();
        running.spawn(async move {
            while !counts.finished.load(Ordering::Relaxed) {
                let started = Instant::now();
                store
                    .expire_leases(now_millis())
                    .await
                    .expect("expire leases");
                let micros = started.elapsed().as_micros() as u64;
                counts.expire_micros.fetch_max(micros, Ordering::Relaxed);
                store.next_lease_deadline().await.expect("next deadline");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    // The runner's exporter: one span per task, sent every 250 ms.
    {
        let store = store.clone();
        let counts = counts.clone();
        running.spawn(async move {
            let mut exported = 0;
            while !counts.finished.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let done = counts.done.load(Ordering::Relaxed);
                let records = (exported..done)
                    .map(|index| TelemetryRecord {
                        id: Uuid::now_v7(),
                        trace_id: vec![7; 16],
                        task_id: Some(format!("task-{index}")),
                        severity: 0,
                        time_unix_nano: 0,
                        encoded: vec![0x2a; 300],
                    })
                    .collect();
                exported = done;
                store
                    .insert_telemetry(TelemetryKind::Span, records)
                    .await
                    .expect("insert spans");
            }
        });
    }
    if poll {
        let store = store.clone();
        let counts = counts.clone();
        running.spawn(async move {
            while !counts.finished.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let polled = Instant::now();
                let filter = JobFilter {
                    name_contains: Some("drain".to_string()),
                    ..JobFilter::default()
                };
                let page = Page {
                    after: None,
                    limit: 1,
                    descending: false,
                };
                let jobs = store.query_jobs(filter, page).await.expect("query jobs");
                println!(
                    "       poll {:.1} ms ({} tasks)",
                    polled.elapsed().as_secs_f64() * 1e3,
                    jobs[0].stats.total_tasks
                );
            }
        });
    }
    let monitor = {
        let counts = counts.clone();
        tokio::spawn(async move {
            let (mut last_done, mut last_micros, mut last_cpu) = (0, 0, process_cpu());
            let mut second = 0;
            while !counts.finished.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                second += 1;
                let done = counts.done.load(Ordering::Relaxed);
                let micros = counts.call_micros.load(Ordering::Relaxed);
                let cpu = process_cpu();
                let calls = (done - last_done).max(1);
                println!(
                    "{second:>4} s {done:>7} done {:>6} tasks/s  call {:>5.2} ms  CPU {:>4} µs/task  \
                     WAL {:>5} frames  expire_leases {:>5.1} ms",
                    done - last_done,
                    (micros - last_micros) as f64 / calls as f64 / 1e3,
                    (cpu - last_cpu).as_micros() as u64 / calls,
                    wal_frames(&shm),
                    counts.expire_micros.swap(0, Ordering::Relaxed) as f64 / 1e3,
                );
                (last_done, last_micros, last_cpu) = (done, micros, cpu);
            }
        })
    };

    // The workers end when nothing is claimable (the helpers loop until `finished`).
    for _ in 0..workers {
        running
            .join_next()
            .await
            .expect("a worker is left")
            .expect("a worker panicked");
    }
    let elapsed = drain_started.elapsed().as_secs_f64();
    counts.finished.store(true, Ordering::Relaxed);
    while let Some(ended) = running.join_next().await {
        ended.expect("a helper panicked");
    }
    monitor.await.expect("the monitor panicked");
    let done = counts.done.load(Ordering::Relaxed);
    let mut quarters = String::new();
    let mut since = drain_started;
    for quarter in counts.quarters.lock().expect("lock").iter() {
        let rate = (tasks / 4) as f64 / (*quarter - since).as_secs_f64();
        quarters.push_str(&format!(" {rate:.0}"));
        since = *quarter;
    }
    println!(
        "drained {done} tasks in {elapsed:.1} s: {:.0} tasks/s; by quarter:{quarters}",
        done as f64 / elapsed
    );

    let job = store.get_job(job_id).await.expect("get job");
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(job.stats.total_tasks, tasks + 1);
    assert_eq!(job.stats.tasks_by_state, [(TaskState::Computed, tasks + 1)]);
    assert_eq!(done, tasks, "every subtask ran once");
}
