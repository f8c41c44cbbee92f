//! The one retry pacing for calls to the API: exponential backoff with jitter (`backon`),
//! started again after a success. Jitter keeps a fleet of runners that lost the server at
//! the same moment from coming back in lockstep.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The first pause before retrying a call to the server.
pub const SERVER_FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest pause between two retries of a call to the server.
pub const SERVER_MAX_DELAY: Duration = Duration::from_secs(10);

/// Pauses that double from a first delay up to a ceiling, each with up to as much again of
/// random jitter; never gives up (callers decide when to stop).
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    /// Doubling from `first` up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        let builder = ExponentialBuilder::new()
            .with_min_delay(first)
            .with_max_delay(max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            delays: builder.build(),
            builder,
            max,
        }
    }

    /// For retrying calls to an unreachable server: [`SERVER_FIRST_DELAY`] doubling to
    /// [`SERVER_MAX_DELAY`].
    pub fn for_server() -> Self {
        Self::new(SERVER_FIRST_DELAY, SERVER_MAX_DELAY)
    }

    /// The next pause.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max)
    }

    /// Sleeps for the next pause and answers how long it was.
    pub async fn wait(&mut self) -> Duration {
        let delay = self.next_delay();
        tokio::time::sleep(delay).await;
        delay
    }

    /// Starts again from the first delay (after a success).
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_ceiling_and_reset() {
        let (first, max) = (Duration::from_millis(10), Duration::from_millis(80));
        let mut backoff = Backoff::new(first, max);
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay()).collect();
        // Jitter adds at most the delay again.
        assert!(delays[0] >= first && delays[0] <= first * 2, "{delays:?}");
        assert!(delays[7] >= max && delays[7] <= max * 2, "{delays:?}");
        backoff.reset();
        let again = backoff.next_delay();
        assert!(again >= first && again <= first * 2, "{again:?}");
    }
}
