//! One task keeps the leases of every running task alive (sdk-core's heartbeat manager):
//! Rust timers, so a task holding its interpreter's GIL in a tight loop keeps its lease.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use crate::api::convert::{duration, id, std_duration};
use crate::api::workflows_v1::TaskLeaseRequest;
use crate::client::Client;

/// How often the manager looks for leases due for extension.
const TICK: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
struct Lease {
    lease: Duration,
    extend_at: Instant,
    lost: bool,
    /// The claimant id the task was claimed with (extensions must carry it).
    claimant: String,
    /// The task's display when it was claimed (for a hand-back's failure display).
    display: String,
}

/// The leases of running tasks; cheap to clone.
#[derive(Clone, Default)]
pub struct Leases {
    running: Arc<Mutex<HashMap<Uuid, Lease>>>,
}

impl Leases {
    /// Starts keeping a task's lease (granted `lease`, extend after `wait`) for the slot
    /// that claimed it as `claimant`.
    pub fn hold(&self, task: Uuid, lease: Duration, wait: Duration, claimant: &str, display: &str) {
        if let Ok(mut running) = self.running.lock() {
            let lease = Lease {
                lease,
                extend_at: Instant::now() + wait,
                lost: false,
                claimant: claimant.to_string(),
                display: display.to_string(),
            };
            running.insert(task, lease);
        }
    }

    /// Stops keeping a task's lease; answers whether it was lost meanwhile.
    pub fn release(&self, task: Uuid) -> bool {
        self.running
            .lock()
            .ok()
            .and_then(|mut running| running.remove(&task))
            .is_some_and(|lease| lease.lost)
    }

    /// The tasks whose leases are held now: (task, its display, the claimant id).
    pub fn running(&self) -> Vec<(Uuid, String, String)> {
        self.running
            .lock()
            .map(|running| {
                running
                    .iter()
                    .map(|(task, lease)| (*task, lease.display.clone(), lease.claimant.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Extends due leases until `stop` turns true.
    pub async fn run(self, client: Client, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut client = client;
        loop {
            let now = Instant::now();
            let due: Vec<(Uuid, Duration, String)> = self
                .running
                .lock()
                .map(|running| {
                    running
                        .iter()
                        .filter(|(_, lease)| !lease.lost && lease.extend_at <= now)
                        .map(|(task, lease)| (*task, lease.lease, lease.claimant.clone()))
                        .collect()
                })
                .unwrap_or_default();
            for (task, lease, claimant) in due {
                let mut request = tonic::Request::new(TaskLeaseRequest {
                    task_id: Some(id(task)),
                    requested_lease: Some(duration(lease * 2)),
                });
                if let Ok(value) = claimant.parse() {
                    request
                        .metadata_mut()
                        .insert(crate::api::RUNNER_ID_HEADER, value);
                }
                let answer = client.tasks.extend_task_lease(request).await;
                let Ok(mut running) = self.running.lock() else {
                    return;
                };
                let Some(entry) = running.get_mut(&task) else {
                    continue;
                };
                match answer {
                    Ok(granted) => {
                        let granted = granted.into_inner();
                        let lease = granted.lease.as_ref().map(std_duration).unwrap_or_default();
                        if lease.is_zero() {
                            tracing::warn!(%task, "the task's lease was not extended: another runner may own it now");
                            entry.lost = true;
                        } else {
                            let wait = granted
                                .recommended_wait_until_next_extension
                                .as_ref()
                                .map(std_duration)
                                .unwrap_or(lease / 3)
                                .max(Duration::from_millis(500));
                            entry.lease = lease;
                            entry.extend_at = Instant::now() + wait;
                        }
                    }
                    Err(status) => {
                        // Keep trying until the lease would run out; the server decides.
                        tracing::warn!(%task, error = %status.message(), "extending a lease failed; retrying");
                        entry.extend_at = Instant::now() + Duration::from_secs(1);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = stop.changed() => return,
            }
        }
    }
}
