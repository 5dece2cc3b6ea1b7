//! One retry policy for the services: exponential backoff with jitter (the `backon`
//! crate), for loops that retry until they succeed or are shut down.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// First delay of [`retry_delays`].
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// Longest delay of [`retry_delays`].
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// Delays for retrying forever: 100 ms doubling to 5 s, with jitter so many members do
/// not retry in step. The iterator never ends.
pub fn retry_delays() -> impl Iterator<Item = Duration> + Send {
    retry_delays_between(FIRST_DELAY, MAX_DELAY)
}

/// [`retry_delays`] with other bounds.
pub fn retry_delays_between(
    first: Duration,
    max: Duration,
) -> impl Iterator<Item = Duration> + Send {
    ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_never_end() {
        let delays: Vec<Duration> = retry_delays().take(50).collect();
        assert_eq!(delays.len(), 50);
        // Jitter adds up to one more base delay.
        assert!(
            delays[0] >= FIRST_DELAY && delays[0] <= 2 * FIRST_DELAY,
            "{delays:?}"
        );
        assert!(delays.iter().all(|d| *d <= 2 * MAX_DELAY), "{delays:?}");
        assert!(delays[40..].iter().all(|d| *d >= MAX_DELAY), "{delays:?}");
    }
}
