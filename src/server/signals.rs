//! Wake-ups between the parts of a server, and between the replicas of one database.
//!
//! Two signals: *work* (a task may have become claimable: a submission, an applied report,
//! a retry, a requeue), which wakes every long poll waiting for a task; and *deployments*
//! (a release was deployed or undeployed somewhere), which makes every deployment watch
//! read its cluster again. On one machine they are a `Notify` and a `watch`.
//!
//! With PostgreSQL, several replicas serve one database, and a runner long-polling on
//! replica B must wake when a task is submitted through replica A. Each replica then keeps:
//! - one listening connection (`LISTEN tilebox_work, tilebox_deployments`), on a thread of
//!   its own, that turns every notification from another replica into the local signal,
//!   and reconnects with backoff; on every (re)connect it fires both signals once, since a
//!   notification may have been missed while it was away (a spurious wake-up costs one
//!   empty claim; deployment watches drop identical snapshots);
//! - one notifying connection, on another thread, that sends `pg_notify('tilebox_work',
//!   <replica id>)` in autocommit, coalescing announcements: at most one NOTIFY per
//!   [`NOTIFY_INTERVAL`]. NOTIFY takes a lock global to the database at commit, so it is
//!   kept out of the hot transactions and its rate bounded per replica.
//!
//! Deployment changes are notified inside the store's own transaction (rare; then the
//! notification cannot be lost between the commit and the NOTIFY). Should a replica die
//! between a commit and its work NOTIFY, runners on the others find the work at the end of
//! their long poll: a delay, never a loss.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use tokio::sync::{Notify, watch};

/// The channel of work announcements.
pub const WORK_CHANNEL: &str = "tilebox_work";
/// The channel of deployment changes.
pub const DEPLOYMENTS_CHANNEL: &str = "tilebox_deployments";
/// At most one work NOTIFY per replica per this interval.
const NOTIFY_INTERVAL: Duration = Duration::from_millis(2);
/// How often the listening connection is checked for an answer.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The signals of one server; cheap to clone.
#[derive(Clone)]
pub struct Signals {
    work: Arc<Notify>,
    deployments: Arc<watch::Sender<u64>>,
    outbound: Option<Arc<Outbound>>,
}

/// Work announcements waiting for the notifying thread.
struct Outbound {
    pending: Mutex<bool>,
    wake: Condvar,
    stopped: AtomicBool,
}

impl Signals {
    /// Signals within this process only (SQLite: one server per database).
    pub fn local() -> Self {
        Self {
            work: Arc::new(Notify::new()),
            deployments: Arc::new(watch::channel(0u64).0),
            outbound: None,
        }
    }

    /// Signals shared with every replica on the database of `config`.
    pub fn postgres(config: postgres::Config, target: String) -> Self {
        let signals = Self {
            outbound: Some(Arc::new(Outbound {
                pending: Mutex::new(false),
                wake: Condvar::new(),
                stopped: AtomicBool::new(false),
            })),
            ..Self::local()
        };
        let replica = uuid::Uuid::new_v4().simple().to_string();
        let listener = signals.clone();
        let (listen_config, listen_target, listen_replica) =
            (config.clone(), target.clone(), replica.clone());
        let spawned = std::thread::Builder::new()
            .name("postgres-listen".to_string())
            .spawn(move || listener.listen(listen_config, listen_target, listen_replica))
            .and_then(|_| {
                let notifier = signals.clone();
                std::thread::Builder::new()
                    .name("postgres-notify".to_string())
                    .spawn(move || notifier.notify_loop(config, target, replica))
            });
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the threads that signal other replicas; runners on them will find work at the end of their long polls");
        }
        signals
    }

    /// What long polls wait on.
    pub fn work(&self) -> &Arc<Notify> {
        &self.work
    }

    /// Bumped on every deployment change.
    pub fn deployments(&self) -> &Arc<watch::Sender<u64>> {
        &self.deployments
    }

    /// Wakes every long poll here at once, and (coalesced) those of the other replicas.
    pub fn announce_work(&self) {
        self.work.notify_waiters();
        if let Some(outbound) = &self.outbound {
            if let Ok(mut pending) = outbound.pending.lock() {
                *pending = true;
            }
            outbound.wake.notify_one();
        }
    }

    /// Tells this server's deployment watches to read again (other replicas hear of it
    /// from the store's own NOTIFY).
    pub fn announce_deployments(&self) {
        self.deployments.send_modify(|version| *version += 1);
    }

    /// Stops the threads that talk to the other replicas (they end within a second).
    pub fn stop(&self) {
        if let Some(outbound) = &self.outbound {
            outbound.stopped.store(true, Ordering::SeqCst);
            outbound.wake.notify_all();
        }
    }

    fn stopped(&self) -> bool {
        self.outbound
            .as_ref()
            .is_none_or(|outbound| outbound.stopped.load(Ordering::SeqCst))
    }

    fn listen(self, config: postgres::Config, target: String, replica: String) {
        let mut backoff = Duration::from_millis(100);
        while !self.stopped() {
            let connected = config.connect(postgres::NoTls).and_then(|mut client| {
                client.batch_execute(&format!(
                    "LISTEN {WORK_CHANNEL}; LISTEN {DEPLOYMENTS_CHANNEL}"
                ))?;
                Ok(client)
            });
            let mut client = match connected {
                Ok(client) => client,
                Err(error) => {
                    tracing::warn!(%error, database = %target, "cannot listen for other replicas' notifications; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            tracing::debug!(database = %target, "listening for other replicas' notifications");
            // Whatever was announced while this replica was not listening.
            self.work.notify_waiters();
            self.announce_deployments();
            let mut last_check = std::time::Instant::now();
            'listening: while !self.stopped() {
                let mut notifications = client.notifications();
                let mut waiting = notifications.timeout_iter(Duration::from_secs(1));
                loop {
                    match waiting.next() {
                        Ok(Some(notification)) => match notification.channel() {
                            WORK_CHANNEL if notification.payload() != replica => {
                                self.work.notify_waiters();
                            }
                            DEPLOYMENTS_CHANNEL => self.announce_deployments(),
                            _ => {}
                        },
                        Err(error) => {
                            tracing::warn!(%error, database = %target, "lost the connection listening for other replicas; reconnecting");
                            break 'listening;
                        }
                        Ok(None) => break,
                    }
                }
                drop(waiting);
                drop(notifications);
                // A connection that only reads never notices a peer that went away
                // silently (keepalives bound it too): ask it something now and then.
                if client.is_closed()
                    || (last_check.elapsed() >= HEARTBEAT
                        && client.is_valid(Duration::from_secs(5)).is_err())
                {
                    tracing::warn!(database = %target, "the connection listening for other replicas stopped answering; reconnecting");
                    break;
                }
                if last_check.elapsed() >= HEARTBEAT {
                    last_check = std::time::Instant::now();
                }
            }
        }
    }

    fn notify_loop(self, config: postgres::Config, target: String, replica: String) {
        let Some(outbound) = self.outbound.clone() else {
            return;
        };
        let mut client: Option<postgres::Client> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            {
                let Ok(mut pending) = outbound.pending.lock() else {
                    return;
                };
                while !*pending && !self.stopped() {
                    pending = match outbound.wake.wait(pending) {
                        Ok(pending) => pending,
                        Err(_) => return,
                    };
                }
                if self.stopped() {
                    return;
                }
                *pending = false;
            }
            let live = match client.take() {
                Some(live) if !live.is_closed() => Ok(live),
                // Not flushed: a NOTIFY is delivered at its commit whether or not the commit
                // waits for the disk, and each one holds the database's notify lock while it
                // commits.
                _ => config.connect(postgres::NoTls).and_then(|mut live| {
                    live.batch_execute("SET synchronous_commit = off")?;
                    Ok(live)
                }),
            };
            match live.and_then(|mut live| {
                live.execute("SELECT pg_notify($1, $2)", &[&WORK_CHANNEL, &replica])?;
                Ok(live)
            }) {
                Ok(live) => {
                    client = Some(live);
                    backoff = Duration::from_millis(100);
                    // Announcements meanwhile are coalesced into the next NOTIFY.
                    std::thread::sleep(NOTIFY_INTERVAL);
                }
                Err(error) => {
                    tracing::warn!(%error, database = %target, "cannot notify other replicas of new work; they find it at the end of their long polls");
                    if let Ok(mut pending) = outbound.pending.lock() {
                        *pending = true;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
