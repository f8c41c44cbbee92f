//! Per-connection limits on calls that stay open: long polls (the `Work` and `NextTask`
//! calls that may wait for work; calls that only report answer at once and are not counted)
//! and deployment watches. One connection (one peer address) may hold at most `limit` of each
//! kind at once; one more is refused with RESOURCE_EXHAUSTED naming the limit, so a client
//! cannot park unbounded server tasks on one connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tonic::Status;

/// What kind of open call a permit is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpenCall {
    /// A `Work` or `NextTask` call that may wait for work.
    LongPoll,
    /// `WatchDeployments`, open until the client goes.
    Watch,
}

impl OpenCall {
    fn describe(self) -> &'static str {
        match self {
            OpenCall::LongPoll => "concurrent long polls (Work/NextTask)",
            OpenCall::Watch => "concurrent deployment watches",
        }
    }
}

/// Counts open calls per connection and kind; cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    limit: usize,
    open: Arc<Mutex<HashMap<(SocketAddr, OpenCall), usize>>>,
}

/// One open call; the count goes down when it is dropped.
#[derive(Debug)]
pub struct Permit {
    key: Option<(SocketAddr, OpenCall)>,
    open: Arc<Mutex<HashMap<(SocketAddr, OpenCall), usize>>>,
}

impl ConnectionLimits {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            open: Arc::default(),
        }
    }

    /// Takes a permit for one more open call of `kind` from `peer`; a call without a peer
    /// address (not over TCP) is not counted.
    pub fn acquire(&self, peer: Option<SocketAddr>, kind: OpenCall) -> Result<Permit, Status> {
        let Some(peer) = peer else {
            return Ok(Permit {
                key: None,
                open: self.open.clone(),
            });
        };
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry((peer, kind)).or_default();
        if *count >= self.limit {
            return Err(Status::resource_exhausted(format!(
                "connection {peer} already has {count} {what} open; this server allows at most {limit} per connection (--max-open-calls-per-connection)",
                count = *count,
                what = kind.describe(),
                limit = self.limit,
            )));
        }
        *count += 1;
        Ok(Permit {
            key: Some((peer, kind)),
            open: self.open.clone(),
        })
    }

    /// How many calls of `kind` are open over all connections.
    pub fn open_calls(&self, kind: OpenCall) -> usize {
        let open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        open.iter()
            .filter(|((_, open_kind), _)| *open_kind == kind)
            .map(|(_, count)| count)
            .sum()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_gets_at_most_its_limit_and_a_dropped_permit_frees_one() {
        let limits = ConnectionLimits::new(2);
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let other: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let first = limits.acquire(Some(peer), OpenCall::Watch).unwrap();
        let _second = limits.acquire(Some(peer), OpenCall::Watch).unwrap();
        let refused = limits.acquire(Some(peer), OpenCall::Watch).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("at most 2 per connection"),
            "{}",
            refused.message()
        );
        // Other kinds and other connections count on their own.
        let _poll = limits.acquire(Some(peer), OpenCall::LongPoll).unwrap();
        let _elsewhere = limits.acquire(Some(other), OpenCall::Watch).unwrap();
        assert_eq!(limits.open_calls(OpenCall::Watch), 3);
        drop(first);
        assert_eq!(limits.open_calls(OpenCall::Watch), 2);
        limits.acquire(Some(peer), OpenCall::Watch).unwrap();
    }
}
