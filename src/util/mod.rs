//! Small data structures with no knowledge of tofu: a map keyed by small integers and a
//! cache-line-padded cell (and, for tests, a fixed instant). Every layer may use them; they
//! use nothing of the crate.

pub(crate) mod intmap;
pub(crate) mod padded;

/// A fixed instant, read from the clock once per test process: the starting point of the
/// fake clocks of the protocol core's tests, so that the core itself never reads the clock
/// (its callers pass `now`).
#[cfg(test)]
pub(crate) fn test_epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}
