//! One task keeps the leases of every task the runner holds (sdk-core's heartbeat manager):
//! it owns their state, takes `hold`/`release` messages through a channel, and extends every
//! due lease in one `ExtendLeases` call. Rust timers, so a task holding its interpreter's
//! GIL in a tight loop keeps its lease.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::api::convert::std_duration;
use crate::client::RunnerClient;

/// How often the manager looks for leases due for extension.
const TICK: Duration = Duration::from_millis(200);
/// The shortest wait before extending a lease again.
const MIN_WAIT: Duration = Duration::from_millis(500);
/// The wait before retrying after a failed extension call.
const RETRY_WAIT: Duration = Duration::from_secs(1);
/// The longest wait before extending a lease, whatever the server suggests (an absurd
/// suggestion must not overflow the clock).
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// When to extend a lease `wait` from now: at most [`MAX_WAIT`] away.
fn extend_at(wait: Duration) -> Instant {
    Instant::now() + wait.min(MAX_WAIT)
}

#[derive(Debug)]
struct Lease {
    lease: Duration,
    extend_at: Instant,
    /// The task's display when it was claimed (for a hand-back's failure display).
    display: String,
}

enum Command {
    Hold {
        task: Uuid,
        lease: Duration,
        wait: Duration,
        display: String,
    },
    Release {
        task: Uuid,
    },
    Held {
        reply: oneshot::Sender<Vec<(Uuid, String)>>,
    },
}

/// Where the rest of the runner tells the lease manager what it holds; cheap to clone.
#[derive(Clone)]
pub struct LeasesHandle {
    commands: mpsc::UnboundedSender<Command>,
}

impl LeasesHandle {
    /// Starts keeping a task's lease (granted `lease`; extend after `wait`).
    pub fn hold(&self, task: Uuid, lease: Duration, wait: Duration, display: &str) {
        let _ = self.commands.send(Command::Hold {
            task,
            lease,
            wait: wait.max(MIN_WAIT),
            display: display.to_string(),
        });
    }

    /// Stops keeping a task's lease (it was reported or handed back).
    pub fn release(&self, task: Uuid) {
        let _ = self.commands.send(Command::Release { task });
    }

    /// The tasks whose leases are held now, with their displays.
    pub async fn held(&self) -> Vec<(Uuid, String)> {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Held { reply }).is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }
}

/// The lease manager: owns the held leases and extends them.
pub struct LeaseManager {
    client: RunnerClient,
    commands: mpsc::UnboundedReceiver<Command>,
    leases: HashMap<Uuid, Lease>,
}

impl LeaseManager {
    pub fn new(client: RunnerClient) -> (Self, LeasesHandle) {
        let (sender, commands) = mpsc::unbounded_channel();
        let manager = Self {
            client,
            commands,
            leases: HashMap::new(),
        };
        (manager, LeasesHandle { commands: sender })
    }

    /// Extends due leases until `stop` fires.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.apply(command),
                    None => return,
                },
                _ = tick.tick() => self.extend_due().await,
                _ = stop.cancelled() => return,
            }
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Hold {
                task,
                lease,
                wait,
                display,
            } => {
                self.leases.insert(
                    task,
                    Lease {
                        lease,
                        extend_at: extend_at(wait),
                        display,
                    },
                );
            }
            Command::Release { task } => {
                self.leases.remove(&task);
            }
            Command::Held { reply } => {
                let held = self
                    .leases
                    .iter()
                    .map(|(task, lease)| (*task, lease.display.clone()))
                    .collect();
                let _ = reply.send(held);
            }
        }
    }

    /// Extends every lease that is due, in one call.
    async fn extend_due(&mut self) {
        let now = Instant::now();
        let due: Vec<(Uuid, Duration)> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.extend_at <= now)
            .map(|(task, lease)| (*task, lease.lease.saturating_mul(2)))
            .collect();
        if due.is_empty() {
            return;
        }
        let answer = self.client.extend_leases(&due).await;
        // Messages that arrived meanwhile (a task released during the call) apply first.
        while let Ok(command) = self.commands.try_recv() {
            self.apply(command);
        }
        match answer {
            Ok(granted) => {
                for ((task, _), granted) in due.iter().zip(granted) {
                    let Some(lease) = self.leases.get_mut(task) else {
                        continue;
                    };
                    let length = granted.lease.as_ref().map(std_duration).unwrap_or_default();
                    if length.is_zero() {
                        // The server fences its report, so nothing else needs to happen here.
                        tracing::warn!(%task, "the task's lease was not extended: another runner may own it now");
                        self.leases.remove(task);
                        continue;
                    }
                    let wait = granted
                        .recommended_wait_until_next_extension
                        .as_ref()
                        .map(std_duration)
                        .unwrap_or(length / 3)
                        .max(MIN_WAIT);
                    lease.lease = length;
                    lease.extend_at = extend_at(wait);
                }
            }
            Err(status) => {
                // Keep trying until the lease would run out; the server decides.
                tracing::warn!(count = due.len(), error = %status.message(), "extending leases failed; retrying");
                for (task, _) in &due {
                    if let Some(lease) = self.leases.get_mut(task) {
                        lease.extend_at = Instant::now() + RETRY_WAIT;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absurd_wait_from_the_server_is_capped_instead_of_overflowing_the_clock() {
        let far = Duration::from_secs(i64::MAX as u64);
        let at = extend_at(far);
        assert!(at <= Instant::now() + MAX_WAIT);
        assert!(at > Instant::now() + MAX_WAIT / 2);
    }
}
